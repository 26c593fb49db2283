"""experiment=concatid on both tiny backbones: the face latent as reference tokens with full attention,
cross-reference pairing, full fine-tune or LoRA of rank 4 on q, k, v, o and the FFN."""

from __future__ import annotations

import math

import pytest
import torch

from idvid.randomness import BatchRandom
from idvid.verbs.fit import fit
from tests.conftest import compose_config
from tests.core.test_training import build_model, demo_batch  # noqa: F401  (demo_batch: a fixture)

BACKBONES = ["cogvideox_tiny", "wan_tiny"]
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2")


def loss_of(model, batch):
    return model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lora_of_rank_4_wraps_attention_and_ffn_and_adds_nothing_at_step_0(backbone, demo_batch):  # noqa: F811
    full, cfg = build_model("concatid", f"backbone={backbone}", "recipe=none")
    injector = full.plan.injectors["reference"]
    assert (injector.attention.value, injector.reference_timestep, injector.positions.frame) == ("full", None, "after")
    assert not injector.kv_cache and cfg.model.trainable == "all"
    lora, _ = build_model("concatid", f"backbone={backbone}", "recipe=none", "model.trainable=lora")
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    wrapped = {name.split(".lora_")[0] for name in trainable}
    for target in LORA_TARGETS:  # every block's q, k, v, o and both FFN layers carry an adapter
        matching = [name for name in wrapped if name.endswith(f".{target}")]
        assert len(matching) >= lora.backbone.info.num_layers, (target, sorted(wrapped))
    assert {p.shape[0] for name, p in lora.named_parameters() if ".lora_A." in name} == {4}
    with torch.no_grad():
        torch.testing.assert_close(loss_of(lora, demo_batch)["loss"], loss_of(full, demo_batch)["loss"], rtol=0, atol=0)


def test_cross_reference_pairing_feeds_the_other_frames_face(demo_batch):  # noqa: F811
    model, _ = build_model("concatid", "recipe.cross_reference.probability=1", "recipe.text_drop=null")
    batch = {**demo_batch, "has_cross_ref": torch.ones(len(demo_batch["caption"]), dtype=torch.bool)}
    random = BatchRandom(torch.Generator().manual_seed(0))
    inputs = model._encode_inputs(batch, random)
    assert bool(inputs["batch"]["used_cross_ref"].all())
    cross = model.backbone.encode_video(batch["cross_ref_image"].unsqueeze(1))
    own = model.backbone.encode_video(batch["ref_image"].unsqueeze(1))
    # The conditioner encodes a posterior sample: nearer the cross frame's latent than the clip's own reference.
    face = inputs["conditions"]["face_latent"]
    assert (face - cross).abs().mean() < (face - own).abs().mean()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_concatid_trains_two_steps_and_samples(backbone, tmp_path):
    overrides = ["experiment=concatid", f"backbone={backbone}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    overrides += ["callbacks.checkpoint.every_n_train_steps=2", "model.validation.num_inference_steps=2"]
    overrides += ["model.validation.loss_quantiles=[]"]
    loss = fit(compose_config(overrides, run_dir=tmp_path))
    assert loss is not None and math.isfinite(loss)
    assert list((tmp_path / "samples").glob("step000002_*.mp4"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
