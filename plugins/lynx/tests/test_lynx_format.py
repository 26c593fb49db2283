"""convert --from lynx: tiny files in Lynx's layout (models/lynx_full + models/Wan2.1-T2V-14B-Diffusers)."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from idvid.errors import CorruptFileError, MissingFileError
from idvid.interop import load_module
from idvid.registry import PluginKind, build
from idvid.verbs.convert import convert
from tests.conftest import compose_config

ARCFACE, TOKENS, RESAMPLER_DIM, TOKEN_DIM, DEPTH, HEADS_X_64 = 512, 16, 64, 32, 2, 128


def lynx_resampler_file(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Lynx's resampler.safetensors names and shapes (IP-Adapter's Resampler), at tiny sizes."""

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    tensors = {
        "latents": rand(1, TOKENS, RESAMPLER_DIM),
        "proj_in.weight": rand(RESAMPLER_DIM, ARCFACE),
        "proj_in.bias": rand(RESAMPLER_DIM),
        "proj_out.weight": rand(TOKEN_DIM, RESAMPLER_DIM),
        "proj_out.bias": rand(TOKEN_DIM),
        "norm_out.weight": 1 + rand(TOKEN_DIM),
        "norm_out.bias": rand(TOKEN_DIM),
    }
    for i in range(DEPTH):
        tensors |= {
            f"layers.{i}.0.norm1.weight": 1 + rand(RESAMPLER_DIM),
            f"layers.{i}.0.norm1.bias": rand(RESAMPLER_DIM),
            f"layers.{i}.0.norm2.weight": 1 + rand(RESAMPLER_DIM),
            f"layers.{i}.0.norm2.bias": rand(RESAMPLER_DIM),
            f"layers.{i}.0.to_q.weight": rand(HEADS_X_64, RESAMPLER_DIM),
            f"layers.{i}.0.to_kv.weight": rand(2 * HEADS_X_64, RESAMPLER_DIM),
            f"layers.{i}.0.to_out.weight": rand(RESAMPLER_DIM, HEADS_X_64),
            f"layers.{i}.1.0.weight": 1 + rand(RESAMPLER_DIM),
            f"layers.{i}.1.0.bias": rand(RESAMPLER_DIM),
            f"layers.{i}.1.1.weight": rand(4 * RESAMPLER_DIM, RESAMPLER_DIM),
            f"layers.{i}.1.3.weight": rand(RESAMPLER_DIM, 4 * RESAMPLER_DIM),
        }
    return tensors


def lynx_layers_file(names: tuple[str, str], layers: int, dim: int, generator, registers: int = 0):
    """ip_layers / ref_layers: ``<block>.<name>.weight|bias`` per block (and ``<block>.registers``)."""
    tensors = {}
    for block in range(layers):
        for name in names:
            tensors[f"{block}.{name}.weight"] = torch.randn(dim, dim, generator=generator) * 0.1
            tensors[f"{block}.{name}.bias"] = torch.randn(dim, generator=generator) * 0.1
        if registers:
            tensors[f"{block}.registers"] = torch.randn(1, registers, dim, generator=generator)
    return tensors


@pytest.fixture(scope="module")
def wan_node() -> dict:
    return OmegaConf.to_container(compose_config(["backbone=wan_tiny"]).backbone, resolve=True)


@pytest.fixture(scope="module")
def lynx_models(tmp_path_factory, wan_node):
    """``models/`` as Lynx's README lays it out, with a tiny Wan base and tiny full adapters."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    wan = build(PluginKind.BACKBONE, "wan", **{k: v for k, v in wan_node.items() if k != "name"})
    with torch.no_grad():  # non-trivial norms, so that a wrong mapping shows
        for name, parameter in wan.transformer.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    WanPipeline(wan.tokenizer, wan.text_encoder, wan.vae, wan.scheduler, wan.transformer).save_pretrained(
        root / "Wan2.1-T2V-14B-Diffusers"
    )
    adapters = root / "lynx_full"
    adapters.mkdir()
    generator = torch.Generator().manual_seed(7)
    layers, dim = wan.info.num_layers, wan.info.hidden_size
    save_file(lynx_resampler_file(generator), adapters / "resampler.safetensors")
    save_file(lynx_layers_file(("to_k_ip", "to_v_ip"), layers, dim, generator, 2), adapters / "ip_layers.safetensors")
    save_file(lynx_layers_file(("to_k_ref", "to_v_ref"), layers, dim, generator), adapters / "ref_layers.safetensors")
    return root, wan


@pytest.fixture(scope="module")
def converted(lynx_models, tmp_path_factory):
    root, _ = lynx_models
    path, experiment = convert("lynx", str(root), str(tmp_path_factory.mktemp("ckpt") / "lynx.ckpt"), [])
    assert experiment == "lynx"
    return load_module(path)


def test_lynx_files_fill_the_adapters_and_the_base_fills_the_backbone(lynx_models, converted):
    root, wan = lynx_models
    resampler = load_file(root / "lynx_full" / "resampler.safetensors")
    ip_layers = load_file(root / "lynx_full" / "ip_layers.safetensors")
    ref_layers = load_file(root / "lynx_full" / "ref_layers.safetensors")
    id_adapter, ref_adapter = converted.plan.injectors["id_adapter"], converted.plan.injectors["ref_adapter"]
    assert converted.backbone.pretrained == str((root / "Wan2.1-T2V-14B-Diffusers").resolve())
    assert id_adapter.resampler.latents.shape == (1, TOKENS, RESAMPLER_DIM) and len(id_adapter.resampler.layers) == 2
    for key, value in resampler.items():
        assert torch.equal(id_adapter.resampler.state_dict()[key], value), key
    for name, parameter in wan.transformer.state_dict().items():
        assert torch.equal(converted.backbone.transformer.state_dict()[name], parameter), name
    for block in range(wan.info.num_layers):
        assert torch.equal(id_adapter.attention[block].to_k.weight, ip_layers[f"{block}.to_k_ip.weight"])
        assert torch.equal(id_adapter.attention[block].to_v.bias, ip_layers[f"{block}.to_v_ip.bias"])
        assert torch.equal(id_adapter.registers[block], ip_layers[f"{block}.registers"])
        assert torch.equal(ref_adapter.attention[block].to_k.weight, ref_layers[f"{block}.to_k_ref.weight"])
        assert torch.equal(ref_adapter.attention[block].to_v.weight, ref_layers[f"{block}.to_v_ref.weight"])
        assert torch.equal(ref_adapter.attention[block].to_q.weight, wan.transformer.blocks[block].attn1.to_q.weight)


def test_converted_id_adapter_adds_what_lynx_adds_in_the_text_attention(lynx_models, converted):
    """Lynx's ID-adapter inside block i's attn2: to_out.0.weight @ attention(norm_q(to_q(norm2(h))),
    norm_k(to_k_ip(tokens)), to_v_ip(tokens)), added to the text attention's output before to_out.0."""
    root, wan = lynx_models
    ip_layers = load_file(root / "lynx_full" / "ip_layers.safetensors")
    id_adapter = converted.plan.injectors["id_adapter"]
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 12, wan.info.hidden_size, generator=generator)
    embedding = torch.randn(2, ARCFACE, generator=generator)
    identity = id_adapter.identity_tokens(embedding)
    block, heads = wan.transformer.blocks[1], wan.transformer.config.num_attention_heads
    with torch.no_grad():
        tokens = torch.cat([identity, ip_layers["1.registers"].expand(2, -1, -1)], dim=1)
        query = block.attn2.norm_q(block.attn2.to_q(block.norm2(hidden)))
        key = block.attn2.norm_k(F.linear(tokens, ip_layers["1.to_k_ip.weight"], ip_layers["1.to_k_ip.bias"]))
        value = F.linear(tokens, ip_layers["1.to_v_ip.weight"], ip_layers["1.to_v_ip.bias"])
        split = [x.unflatten(2, (heads, -1)).transpose(1, 2) for x in (query, key, value)]
        attended = F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)
        lynx = F.linear(attended, block.attn2.to_out[0].weight)
        kit = id_adapter(1, hidden, id_adapter.prepare({"face_embedding": embedding}, None))
    torch.testing.assert_close(kit, lynx)


def test_a_converted_lynx_model_samples(converted):
    batch = {
        "ref_image": torch.rand(1, 3, 64, 64) * 2 - 1,
        "ref_embedding": torch.randn(1, ARCFACE),
        "caption": ["a person walks"],
    }
    video = converted.generate(batch, 5, 64, 64, num_inference_steps=1)
    assert video.shape == (1, 5, 3, 64, 64) and torch.isfinite(video).all()


def test_lynx_lite_has_the_id_adapter_only(lynx_models, tmp_path):
    root, _ = lynx_models
    lite = tmp_path / "lynx_lite"
    lite.mkdir()
    for name in ("resampler.safetensors", "ip_layers.safetensors"):
        (lite / name).write_bytes((root / "lynx_full" / name).read_bytes())
    (tmp_path / "Wan2.1-T2V-14B-Diffusers").symlink_to(root / "Wan2.1-T2V-14B-Diffusers")
    module = load_module(convert("lynx", str(tmp_path), str(tmp_path / "lite.ckpt"), [])[0])
    assert sorted(module.plan.injectors) == ["id_adapter"]


def test_missing_or_mismatched_lynx_files_are_refused_with_the_fix(lynx_models, tmp_path):
    root, _ = lynx_models
    with pytest.raises(MissingFileError, match=r"(?s)No Lynx adapters at .*ip_layers.safetensors.*lynx_full"):
        convert("lynx", str(tmp_path), str(tmp_path / "x.ckpt"), [])
    alone = tmp_path / "alone" / "lynx_full"
    alone.mkdir(parents=True)
    for name in ("resampler.safetensors", "ip_layers.safetensors"):
        (alone / name).write_bytes((root / "lynx_full" / name).read_bytes())
    with pytest.raises(MissingFileError, match=r"(?s)No diffusers Wan pipeline folder.*Wan2.1-T2V-14B-Diffusers/"):
        convert("lynx", str(alone.parent), str(tmp_path / "x.ckpt"), [])
    (alone.parent / "Wan2.1-T2V-14B-Diffusers").symlink_to(root / "Wan2.1-T2V-14B-Diffusers")
    save_file(lynx_layers_file(("to_k_ip", "to_v_ip"), 2, 32, torch.Generator()), alone / "ip_layers.safetensors")
    with pytest.raises(CorruptFileError, match=r"(?s)to_k_ip for blocks .*\(2\).*has 4 blocks"):
        convert("lynx", str(alone.parent), str(tmp_path / "x.ckpt"), [])
