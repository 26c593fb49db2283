"""``convert --from lynx``: Lynx's released adapters on a diffusers Wan 2.1 T2V base -> the kit's ``lynx`` model.

Lynx (ByteDance, github.com/bytedance/lynx) ships its adapters as three safetensors files in one folder
(``lynx_full/``; ``lynx_lite/`` has no Ref-adapter) and runs them on ``Wan2.1-T2V-14B-Diffusers``:

* ``resampler.safetensors``: the Perceiver resampler (ArcFace 512 -> 16 tokens of width 5120); its
  names are those of ``idvid_lynx.resampler.PerceiverResampler``.
* ``ip_layers.safetensors``: per block ``<i>.to_k_ip``, ``<i>.to_v_ip`` (and ``<i>.registers`` when
  present): key and value projections of the identity tokens inside block i's text cross-attention
  (``attn2``), which lends its query projection, q/k RMS norms and output projection.
* ``ref_layers.safetensors``: per block ``<i>.to_k_ref``, ``<i>.to_v_ref``: key and value projections
  of the reference pass's tokens inside block i's self-attention (``attn1``), with the same loans.

In the kit each adapter owns those parts: ``AdapterAttention`` of block i takes ``to_k``/``to_v`` from
Lynx's file and ``to_q``, ``norm_q``, ``norm_k``, ``to_out`` (weight; its bias is zero because the
block's own output bias is already in the residual stream) from the base block's attention, and the
ID-adapter's input norm from the block's ``norm2``. What differs from Lynx's inference (README, Lynx):
the adapters act at a site, so the query reads the tokens there (``attn_ffn``: after the text
cross-attention) instead of inside the attention, and the Ref-adapter is not gated by the block's
timestep modulation.

SOURCE is the folder Lynx's README fills: it holds ``lynx_full/`` (or ``lynx_lite/``) and
``Wan2.1-T2V-14B-Diffusers/``; the adapter folder itself and a base pipeline folder beside it work too.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from idvid.errors import CorruptFileError, MissingFileError
from idvid.interop import ConvertedModel, load_diffusers_model, read_json_file
from idvid.registry import register_format

RESAMPLER, IP_LAYERS, REF_LAYERS = "resampler.safetensors", "ip_layers.safetensors", "ref_layers.safetensors"
ADAPTER_FOLDERS = ("lynx_full", "lynx_lite")
BUILD_OPTIONS = ("transformer", "vae", "text_encoder", "scheduler")  # the backbone node's build-from-config parts
RESAMPLER_DIM_HEAD = 64  # Lynx's resampler: 20 heads of 64 (the files hold only heads x dim_head)


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CorruptFileError(f"{path} cannot be read ({error}).", "Copy it again from the Lynx download.") from None


def adapter_folder(source: Path) -> Path:
    """The folder with Lynx's ``ip_layers.safetensors``: SOURCE itself or its lynx_full/ (lynx_lite/)."""
    for folder in (source, *(source / name for name in ADAPTER_FOLDERS)):
        if (folder / IP_LAYERS).is_file():
            return folder
    raise MissingFileError(
        f"No Lynx adapters at {source}: expected {IP_LAYERS} and {RESAMPLER} (and {REF_LAYERS} for the full "
        f"model) in {source} or in {source}/lynx_full/.",
        "Give the folder Lynx's README fills (models/, with lynx_full/ from huggingface.co/ByteDance/lynx and "
        "Wan2.1-T2V-14B-Diffusers/), copied to this machine; nothing is downloaded.",
    )


def base_folder(source: Path, adapters: Path) -> Path:
    """The diffusers Wan T2V pipeline folder beside the adapters (Lynx's models/Wan2.1-T2V-14B-Diffusers)."""
    for parent in dict.fromkeys((source, adapters.parent)):
        for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
            config = folder / "transformer" / "config.json"
            if config.is_file() and read_json_file(config).get("_class_name") == "WanTransformer3DModel":
                return folder
    raise MissingFileError(
        f"No diffusers Wan pipeline folder next to the Lynx adapters in {source}: Lynx's adapters act on the "
        "base model's attention layers, whose projections the kit's adapters take over.",
        f"Put Wan2.1-T2V-14B-Diffusers/ (transformer/, vae/, text_encoder/, tokenizer/, scheduler/) in {source}, "
        "as Lynx's README lays it out.",
    )


def _blocks(weights: dict[str, torch.Tensor], name: str) -> list[int]:
    return sorted({int(m.group(1)) for key in weights if (m := re.fullmatch(rf"(\d+)\.{name}\.weight", key))})


def _attention_weights(
    base: dict[str, torch.Tensor], block: int, attention: str, key: torch.Tensor, value: torch.Tensor, norm=None
):
    """One kit AdapterAttention's tensors: Lynx's key/value projections, the base attention's query and output."""
    prefix = f"blocks.{block}.{attention}."
    weights = {
        "to_q.weight": base[prefix + "to_q.weight"],
        "to_q.bias": base[prefix + "to_q.bias"],
        "norm_q.weight": base[prefix + "norm_q.weight"],
        "norm_k.weight": base[prefix + "norm_k.weight"],
        "to_out.weight": base[prefix + "to_out.0.weight"],
        "to_out.bias": torch.zeros_like(base[prefix + "to_out.0.bias"]),  # the block adds its own bias already
        "to_k.weight": key["weight"],
        "to_k.bias": key["bias"],
        "to_v.weight": value["weight"],
        "to_v.bias": value["bias"],
    }
    dim = weights["to_q.weight"].shape[0]
    weights["norm.weight"] = norm[0] if norm else torch.ones(dim)  # attn1's input norm has no affine part
    weights["norm.bias"] = norm[1] if norm else torch.zeros(dim)
    return weights


@register_format("lynx")
class LynxFormat:
    """Read Lynx's adapter files (full: ID- and Ref-adapter; lite: ID-adapter) with their Wan base."""

    def read(self, path: Path) -> ConvertedModel:
        adapters = adapter_folder(path)
        base_path = base_folder(path, adapters)
        base_model = load_diffusers_model(WanTransformer3DModel, base_path / "transformer")
        base = base_model.state_dict()
        heads, layers = base_model.config.num_attention_heads, base_model.config.num_layers
        state_dict = {f"backbone.transformer.{key}": value for key, value in base.items()}
        if not (adapters / RESAMPLER).is_file():
            raise MissingFileError(f"{adapters / RESAMPLER} is missing.", "Copy the whole Lynx adapter folder.")
        resampler = _load(adapters / RESAMPLER)
        ip_layers = _load(adapters / IP_LAYERS)
        self._check_blocks(ip_layers, "to_k_ip", layers, adapters / IP_LAYERS)

        depth = len({key.split(".")[1] for key in resampler if key.startswith("layers.")})
        resampler_dim = resampler["latents"].shape[2]
        id_adapter = {
            "name": "lynx.id_adapter",
            "site": "attn_ffn",
            "blocks": "all",
            "id_dim": resampler["proj_in.weight"].shape[1],
            "num_tokens": resampler["latents"].shape[1],
            "resampler_dim": resampler_dim,
            "resampler_depth": depth,
            "resampler_heads": resampler["layers.0.0.to_q.weight"].shape[0] // RESAMPLER_DIM_HEAD,
            "resampler_dim_head": RESAMPLER_DIM_HEAD,
            "ff_mult": resampler["layers.0.1.1.weight"].shape[0] // resampler_dim,
            "token_dim": resampler["proj_out.weight"].shape[0],
            "heads": heads,
            "registers": ip_layers["0.registers"].shape[1] if "0.registers" in ip_layers else 0,
        }
        state_dict.update({f"plan.injectors.id_adapter.resampler.{k}": v for k, v in resampler.items()})
        for block in range(layers):
            key, value = (
                {part: ip_layers[f"{block}.{name}.{part}"] for part in ("weight", "bias")}
                for name in ("to_k_ip", "to_v_ip")
            )
            norm = (base[f"blocks.{block}.norm2.weight"], base[f"blocks.{block}.norm2.bias"])
            for name, tensor in _attention_weights(base, block, "attn2", key, value, norm).items():
                state_dict[f"plan.injectors.id_adapter.attention.{block}.{name}"] = tensor
            if id_adapter["registers"]:
                state_dict[f"plan.injectors.id_adapter.registers.{block}"] = ip_layers[f"{block}.registers"]
        injectors = {"id_adapter": id_adapter}
        notes = [
            f"Lynx's ID-adapter expects ArcFace embeddings ({id_adapter['id_dim']} wide): sample and fine-tune "
            "with face=insightface."
        ]

        if (adapters / REF_LAYERS).is_file():
            ref_layers = _load(adapters / REF_LAYERS)
            self._check_blocks(ref_layers, "to_k_ref", layers, adapters / REF_LAYERS)
            injectors["ref_adapter"] = {"name": "lynx.ref_adapter", "site": "attn_ffn", "blocks": "all", "heads": heads}
            for block in range(layers):
                key, value = (
                    {part: ref_layers[f"{block}.{name}.{part}"] for part in ("weight", "bias")}
                    for name in ("to_k_ref", "to_v_ref")
                )
                for name, tensor in _attention_weights(base, block, "attn1", key, value).items():
                    state_dict[f"plan.injectors.ref_adapter.attention.{block}.{name}"] = tensor
        else:
            notes.append(
                f"{adapters} has no {REF_LAYERS} (Lynx lite): the model has the ID-adapter only; its reference "
                "pass can be switched off with conditioners.reference_pass=null."
            )
        return ConvertedModel(
            experiment="lynx",
            # Every part from the base folder: no size or scheduler option of the experiment's backbone node applies.
            backbone={"name": "wan", "pretrained": str(base_path.resolve()), **dict.fromkeys(BUILD_OPTIONS)},
            injectors=injectors,
            state_dict=state_dict,
            notes=notes,
        )

    @staticmethod
    def _check_blocks(weights: dict[str, torch.Tensor], name: str, layers: int, path: Path) -> None:
        blocks = _blocks(weights, name)
        if blocks != list(range(layers)):
            raise CorruptFileError(
                f"{path} has {name} for blocks {blocks[:3]}...{blocks[-3:] if blocks else ''} ({len(blocks)}), but "
                f"the Wan base next to it has {layers} blocks.",
                "Use the base model these adapters were trained on (Lynx: Wan2.1-T2V-14B-Diffusers).",
            )
