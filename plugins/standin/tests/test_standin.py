"""experiment=standin on both tiny backbones: only the reference's LoRA trains, the video path stays the
base model's bit for bit, the zero-initialised LoRA adds nothing at step 0, cached sampling is exact."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from idvid.sampling.sampler import sample_latents
from idvid.verbs.fit import fit
from tests.conftest import compose_config
from tests.core.test_training import build_model, demo_batch  # noqa: F401  (demo_batch: a fixture)

BACKBONES = ["cogvideox_tiny", "wan_tiny"]


def loss_of(model, batch, seed=0):
    return model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(seed)))


def prediction_without_reference(model, batch):
    """The backbone's prediction for the batch's video with no injection at all (the video path alone)."""
    backbone = model.backbone
    latents = backbone.encode_video(batch["video"])
    text = backbone.encode_text(list(batch["caption"]))
    return backbone(latents, torch.full((latents.shape[0],), 500), text)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_the_reference_lora_trains_and_the_video_path_stays_the_base_models(backbone, demo_batch):  # noqa: F811
    model, cfg = build_model("standin", f"backbone={backbone}")
    injector = model.plan.injectors["reference"]
    assert (injector.reference_timestep, injector.attention.value, injector.kv_cache) == (0, "reference_isolated", True)
    assert (injector.positions.frame, injector.positions.height_offset, injector.positions.width_offset) == (
        -1,
        "after",
        "after",
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    layers = model.backbone.info.num_layers
    assert len(trainable) == 2 * (3 * layers - 1)  # q, k, v per block (not the last block's q), down + up each
    assert all(name.startswith("plan.injectors.reference.lora.") for name in trainable)
    assert injector.lora["0_q"].down.out_features == 128

    model.train()
    fresh = copy.deepcopy(model)
    # At step 0 the adapters add exactly nothing: the same loss as a reference with no adapter.
    with torch.no_grad():
        plain = copy.deepcopy(model)
        plain.plan.injectors["reference"].projection_residual = lambda *args: None
        assert torch.equal(loss_of(model, demo_batch)["loss"], loss_of(plain, demo_batch)["loss"])

    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=10.0)
    for step in range(2):
        loss_of(model, demo_batch, step)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(adapter.up.weight.abs().sum() > 0 for adapter in injector.lora.values())
    trained, base = model.state_dict(), fresh.state_dict()
    changed = {key for key in trained if not torch.equal(trained[key], base[key])}
    assert changed and all(key.startswith("plan.injectors.reference.lora.") for key in changed)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(
            prediction_without_reference(model, demo_batch), prediction_without_reference(fresh, demo_batch)
        )
        with_reference = loss_of(model, demo_batch)["prediction"]
        assert not torch.equal(with_reference, loss_of(fresh, demo_batch)["prediction"])

        # Sampling with the trained adapters: the reference's cached keys and values give the uncached result.
        conditions = model.conditions_for(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))
        text = model.backbone.encode_text(list(demo_batch["caption"]))
        shape = model.backbone.latent_shape(len(demo_batch["caption"]), *demo_batch["video"].shape[1:2], 32, 32)
        samples = [
            sample_latents(
                model.backbone,
                model.plan,
                conditions,
                text,
                text * 0,
                shape,
                num_inference_steps=2,
                generator=torch.Generator().manual_seed(0),
                use_reference_cache=cached,
            )
            for cached in (True, False)
        ]
    assert torch.equal(*samples)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_standin_trains_two_steps_and_samples(backbone, tmp_path):
    overrides = ["experiment=standin", f"backbone={backbone}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    overrides += ["callbacks.checkpoint.every_n_train_steps=2", "model.validation.num_inference_steps=2"]
    overrides += ["model.validation.loss_quantiles=[]"]
    loss = fit(compose_config(overrides, run_dir=tmp_path))
    assert loss is not None and math.isfinite(loss)
    assert list((tmp_path / "samples").glob("step000002_*.mp4"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_fit_refuses_references_the_patching_cannot_tile_before_training(tmp_path):
    cfg = compose_config(["experiment=standin", "data.width=56", "trainer.max_steps=1"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)reference latent is 1 x 8 x 7.*multiples of 16 pixels"):
        fit(cfg)
    assert not (tmp_path / "checkpoints").exists()
