"""Lynx's ID-adapter and Ref-adapter on both tiny backbones: no-op at step 0, gradients, bad configs."""

from __future__ import annotations

import functools

import hydra
import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from tests.conftest import compose_config

BACKBONES = ["cogvideox_tiny", "wan_tiny"]


def lynx_model(backbone: str, *extra: str):
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=lynx", f"backbone={backbone}", *extra]).model)


@functools.lru_cache(maxsize=None)
def _model(backbone: str):
    return lynx_model(backbone)


@pytest.fixture(params=BACKBONES)
def model(request):
    return _model(request.param)


def reference_batch(batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(5)
    return {
        "ref_image": torch.rand(batch, 3, 64, 64, generator=generator) * 2 - 1,
        "ref_embedding": torch.randn(batch, 128, generator=generator),
        "caption": ["a person walks"] * batch,
    }


def model_inputs(module):
    """Noisy latents of a 9-frame 64x64 video, timesteps and text, with the Lynx conditions of a batch."""
    random = BatchRandom(torch.Generator().manual_seed(0))
    conditions = module.conditions_for(reference_batch(), random)
    shape = module.backbone.latent_shape(2, 9, 64, 64)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    text = module.backbone.encode_text(["a person walks", "a person smiles"])
    return latents, torch.tensor([100, 700]), text, conditions


def test_lynx_trains_only_its_adapters(model):
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    adapters = ("plan.injectors.id_adapter.", "plan.injectors.ref_adapter.")
    assert trainable and all(name.startswith(adapters) for name in trainable)
    id_adapter, ref_adapter = model.plan.injectors["id_adapter"], model.plan.injectors["ref_adapter"]
    layers = model.backbone.info.num_layers
    assert id_adapter.block_indices == ref_adapter.block_indices == list(range(layers))  # every block
    assert id_adapter.resampler.latents.shape[1] == 16  # 16 identity tokens


def test_zero_initialised_adapters_leave_the_backbone_unchanged(model):
    latents, timestep, text, conditions = model_inputs(model)
    assert sorted(conditions["reference_features"]) == list(range(model.backbone.info.num_layers))
    injection = model.plan.prepare(conditions, BatchRandom(torch.Generator().manual_seed(0)))
    assert len(injection.sites_used()) == model.backbone.info.num_layers  # both adapters, attn_ffn of each block
    with torch.no_grad():
        plain = model.backbone(latents, timestep, text)
        with_adapters = model.backbone(latents, timestep, text, injection)
    assert torch.equal(plain, with_adapters)


def test_gradients_reach_both_adapters(model):
    latents, timestep, text, conditions = model_inputs(model)
    id_adapter, ref_adapter = model.plan.injectors["id_adapter"], model.plan.injectors["ref_adapter"]

    def backward():
        model.zero_grad(set_to_none=True)
        injection = model.plan.prepare(conditions, BatchRandom(torch.Generator().manual_seed(0)))
        model.backbone(latents, timestep, text, injection).square().mean().backward()

    backward()  # at step 0 only the zero output projections can move (everything behind them is multiplied by 0)
    for adapter in (id_adapter, ref_adapter):
        for attention in adapter.attention:
            assert attention.to_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())  # the base is frozen

    with torch.no_grad():  # once the output projections have moved, the whole path learns
        for adapter in (id_adapter, ref_adapter):
            for attention in adapter.attention:
                attention.to_out.weight.normal_(0, 0.1)
    try:
        backward()
        assert id_adapter.resampler.latents.grad.abs().sum() > 0
        assert id_adapter.resampler.proj_in.weight.grad.abs().sum() > 0
        for adapter in (id_adapter, ref_adapter):
            assert all(attention.to_k.weight.grad.abs().sum() > 0 for attention in adapter.attention)
    finally:
        with torch.no_grad():
            for adapter in (id_adapter, ref_adapter):
                for attention in adapter.attention:
                    attention.to_out.weight.zero_()


def test_id_adapter_registers_are_read_with_the_identity_tokens():
    module = lynx_model("wan_tiny", "+injectors.id_adapter.registers=2")
    id_adapter = module.plan.injectors["id_adapter"]
    assert len(id_adapter.registers) == module.backbone.info.num_layers
    conditions = {"face_embedding": torch.randn(2, 128)}
    hidden = torch.randn(2, 5, module.backbone.info.hidden_size)
    with torch.no_grad():
        id_adapter.attention[0].to_out.weight.normal_()
        prepared = id_adapter.prepare(conditions, None)
        assert prepared[0][0].shape == (2, 16 + 2, module.backbone.info.hidden_size)  # 16 tokens + 2 registers
        with_registers = id_adapter(0, hidden, prepared)
        id_adapter.registers[0].add_(1.0)
        assert not torch.equal(with_registers, id_adapter(0, hidden, id_adapter.prepare(conditions, None)))


def test_keys_and_values_are_prepared_once_per_video_when_sampling(monkeypatch):
    module = lynx_model("cogvideox_tiny").eval()
    projections = []
    for name in ("id_adapter", "ref_adapter"):
        to_k = module.plan.injectors[name].attention[0].to_k
        monkeypatch.setattr(to_k, "forward", lambda x, f=to_k.forward: projections.append(x.shape) or f(x))
    video = module.generate(reference_batch(1), 9, 64, 64, num_inference_steps=3)
    assert video.shape == (1, 9, 3, 64, 64)
    assert len(projections) == 2  # block 0's key projection of each adapter: once, not once per step


def test_lynx_without_the_reference_pass_is_refused_at_start_up():
    with pytest.raises(InstantiationException, match=r"(?s)'reference_features', needed by injector\(s\) ref_adapter"):
        lynx_model("cogvideox_tiny", "conditioners.reference_pass=null")
    with pytest.raises(InstantiationException, match=r"(?s)'face_embedding', needed by injector\(s\) id_adapter"):
        lynx_model("cogvideox_tiny", "conditioners.face=null")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("injectors.id_adapter.blocks=[0,9]", r"Block indices \[9\] are out of range .* 4 blocks"),
        ("injectors.ref_adapter.blocks=middle", r"Unknown block selection 'middle'"),
        ("conditioners.reference_pass.blocks=[0,5]", r"reference_pass cannot observe .*blocks=\[0, 5\]"),
        ("injectors.ref_adapter.heads=3", r"heads=3 does not divide the backbone's hidden size 32"),
    ],
)
def test_bad_lynx_configs_are_refused_when_the_model_is_built(override, message):
    with pytest.raises((InstantiationException, ValueError), match=message):
        lynx_model("cogvideox_tiny", override)


def test_bad_lynx_inputs_are_refused_with_the_fix():
    module = lynx_model("cogvideox_tiny", "conditioners.reference_pass.blocks=odd")
    random = BatchRandom(torch.Generator().manual_seed(0))
    conditions = module.conditions_for(reference_batch(), random)
    with pytest.raises(ConfigError, match=r"(?s)acts on blocks \[0, 2\].*recorded only blocks \[1, 3\].*blocks: all"):
        module.plan.prepare(conditions, random)
    id_adapter = module.plan.injectors["id_adapter"]
    with pytest.raises(ConfigError, match=r"(?s)face_embedding \[B, 128\] .* got \(2, 512\).*Set id_dim=512"):
        id_adapter.prepare({"face_embedding": torch.zeros(2, 512)}, random)
