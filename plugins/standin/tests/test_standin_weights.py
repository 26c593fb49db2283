"""convert --from standin: a tiny file written in Stand-In's released LoRA layout becomes a standin checkpoint."""

from __future__ import annotations

import pytest
import torch

from idvid.errors import ConfigError, CorruptFileError
from idvid.interop import load_module
from idvid.verbs.convert import convert
from tests.conftest import compose_config

RANK = 8


@pytest.fixture(scope="module")
def wan_tiny_size():
    transformer = compose_config(["backbone=wan_tiny"]).backbone.transformer
    return transformer.num_layers, transformer.num_attention_heads * transformer.attention_head_dim


def standin_file(path, layers, width, rank=RANK, extra=None):
    """Stand-In's layout: blocks.<i>.self_attn.<q|k|v>_loras.<down|up>.weight under "state_dict"."""
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for block in range(layers):
        for projection in "qkv":
            prefix = f"blocks.{block}.self_attn.{projection}_loras"
            weights[f"{prefix}.down.weight"] = torch.randn(rank, width, generator=generator)
            weights[f"{prefix}.up.weight"] = torch.randn(width, rank, generator=generator)
    torch.save({"state_dict": {**weights, **(extra or {})}}, path)
    return weights


def test_stand_in_lora_file_converts_into_the_reference_adapters(tmp_path, wan_tiny_size):
    layers, width = wan_tiny_size
    weights = standin_file(tmp_path / "Stand-In.ckpt", layers, width)
    path, experiment = convert(
        "standin", str(tmp_path / "Stand-In.ckpt"), str(tmp_path / "kit.ckpt"), ["backbone=wan_tiny"]
    )
    assert experiment == "standin"
    injector = load_module(path).plan.injectors["reference"]
    assert (injector.reference_timestep, injector.attention.value, injector.kv_cache) == (0, "reference_isolated", True)
    assert set(injector.lora) == {f"{b}_{p}" for b in range(layers) for p in "qkv"} - {f"{layers - 1}_q"}
    for name, adapter in injector.lora.items():
        block, projection = name.split("_")
        prefix = f"blocks.{block}.self_attn.{projection}_loras"
        assert torch.equal(adapter.down.weight, weights[f"{prefix}.down.weight"])
        assert torch.equal(adapter.up.weight, weights[f"{prefix}.up.weight"])
    # Stand-In adds up(down(x)), unscaled, to the reference tokens' projection.
    inputs = torch.randn(2, 5, width)
    down, up = weights["blocks.0.self_attn.k_loras.down.weight"], weights["blocks.0.self_attn.k_loras.up.weight"]
    torch.testing.assert_close(injector.projection_residual(0, "k", inputs), inputs @ down.T @ up.T)


def test_a_file_for_another_backbone_or_layout_is_refused(tmp_path, wan_tiny_size):
    layers, width = wan_tiny_size
    standin_file(tmp_path / "wide.ckpt", layers, width * 2)
    with pytest.raises(
        ConfigError, match=rf"(?s)do not fit this backbone \({layers} blocks of width {width}\).*pretrained"
    ):
        convert("standin", str(tmp_path / "wide.ckpt"), str(tmp_path / "a.ckpt"), ["backbone=wan_tiny"])
    standin_file(tmp_path / "deep.ckpt", layers + 1, width)
    with pytest.raises(ConfigError, match="do not fit this backbone"):
        convert("standin", str(tmp_path / "deep.ckpt"), str(tmp_path / "b.ckpt"), ["backbone=wan_tiny"])
    standin_file(tmp_path / "foreign.ckpt", layers, width, extra={"blocks.0.cross_attn.q.weight": torch.zeros(1)})
    with pytest.raises(CorruptFileError, match="not in Stand-In's LoRA layout.*cross_attn"):
        convert("standin", str(tmp_path / "foreign.ckpt"), str(tmp_path / "c.ckpt"), ["backbone=wan_tiny"])
    torch.save(
        {"state_dict": {"blocks.1.self_attn.q_loras.down.weight": torch.zeros(RANK, width)}}, tmp_path / "cut.ckpt"
    )
    with pytest.raises(CorruptFileError, match=r"lacks \['blocks.0.self_attn.q_loras.down.weight'"):
        convert("standin", str(tmp_path / "cut.ckpt"), str(tmp_path / "d.ckpt"), ["backbone=wan_tiny"])
