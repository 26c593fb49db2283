"""trainable=lora: LoRA on the attention projections, trained with the injectors, exported in diffusers' format."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from hydra.errors import InstantiationException

from idvid.backbones.lora import LORA_WEIGHTS_FILE
from idvid.interop import KitFormat, build_for_training, load_module, save_module
from idvid.randomness import BatchRandom

from ..conftest import compose_config
from .test_training import build_model, demo_batch, run_fit  # noqa: F401  (demo_batch is a fixture)

LORA = ["model.trainable=lora", "model.lora.rank=4", "model.lora.alpha=8"]
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _loss(model, batch) -> torch.Tensor:
    return model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]


def _randomise_lora_b(model) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)


@pytest.mark.needs_plugin("idvid_consisid")
def test_lora_wraps_the_attention_projections_and_only_adapters_train(demo_batch):  # noqa: F811
    model, _ = build_model("plan_c", *LORA)
    lora = {n for n, _ in model.named_parameters() if ".lora_" in n}
    wrapped = {n.split(".lora_")[0] for n in lora}
    assert wrapped == {
        f"backbone.transformer.transformer_blocks.{i}.attn1.{target}"
        for i in range(model.backbone.info.num_layers)
        for target in TARGETS
    }
    expected = lora | {n for n, _ in model.plan.named_parameters(prefix="plan")}
    expected |= {"backbone.transformer.patch_embed.proj.weight", "backbone.transformer.patch_embed.proj.bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    # B starts at zero: the model computes exactly what it computed before LoRA was added.
    full, _ = build_model("plan_c")
    full.load_state_dict(
        {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    )
    model.train()
    full.train()
    loss = _loss(model, demo_batch)
    torch.testing.assert_close(loss, _loss(full, demo_batch), rtol=0, atol=0)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {n for n in lora if "lora_B" in n} <= with_grad <= expected


@pytest.mark.needs_plugin("idvid_consisid")
def test_lora_export_loads_back_in_diffusers(tmp_path):
    model, _ = build_model("plan_c", *LORA)
    _randomise_lora_b(model)
    KitFormat().write(model, tmp_path)
    assert (tmp_path / "transformer_lora" / LORA_WEIGHTS_FILE).is_file()
    reloaded = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "transformer")
    reloaded.load_lora_adapter(str(tmp_path / "transformer_lora"), prefix="transformer", weight_name=LORA_WEIGHTS_FILE)

    config = reloaded.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 2, config.in_channels, config.sample_height, config.sample_width, generator=generator)
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=generator)
    with torch.no_grad():
        expected = model.backbone.transformer(latents, text, torch.tensor([500])).sample
        actual = reloaded(latents, text, torch.tensor([500])).sample
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.needs_plugin("idvid_consisid")
def test_init_from_a_full_checkpoint_adds_lora_on_top(tmp_path, demo_batch):  # noqa: F811
    full, _ = build_model("plan_c")
    save_module(full, tmp_path / "full.ckpt")
    cfg = compose_config(["experiment=plan_c", *LORA, f"init_from={tmp_path / 'full.ckpt'}"])
    model = build_for_training(cfg)
    assert any(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    model.train()
    full.train()
    torch.testing.assert_close(_loss(model, demo_batch), _loss(full, demo_batch), rtol=0, atol=0)


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_target_that_matches_nothing_is_refused():
    with pytest.raises(InstantiationException, match=r"lora.targets \['to_qkv'\] match no module"):
        build_model("plan_c", "model.trainable=lora", "model.lora.targets=[to_q,to_qkv]")


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_lora_fit_changes_adapters_not_the_base_and_its_checkpoint_loads_back(tmp_path):
    overrides = ["experiment=plan_c", *LORA, "model.validation.sample=false", "trainer.val_check_interval=100"]
    run_fit(tmp_path, *overrides, "trainer.max_steps=2")
    # The model fit built: same config, same seed, same order (seed, data, model).
    cfg = compose_config(overrides, run_dir=tmp_path)
    L.seed_everything(cfg.seed, workers=True)
    hydra.utils.instantiate(cfg.data)
    initial = hydra.utils.instantiate(cfg.model).state_dict()

    trained = load_module(tmp_path / "checkpoints" / "last.ckpt").state_dict()
    assert set(trained) == set(initial)
    base = [k for k in initial if ".base_layer." in k]
    assert base and all(torch.equal(trained[k], initial[k]) for k in base)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if "lora_B" in k)
