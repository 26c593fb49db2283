"""LoRA on a diffusers transformer's projections (through peft, as diffusers' own LoRA training does).

ConsisID's training code offers LoRA of rank 128 on the attention projections
``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` as the alternative to a full fine-tune; each
backbone names its default targets (``Backbone.lora_targets``). The adapter weights export in
diffusers' key format (``pytorch_lora_weights.safetensors``, keys ``transformer.<module>.lora_A.weight``
...) through the backbone (``Backbone.save_lora``: each family's pipeline class writes its own
file), which ``pipeline.load_lora_weights`` and ``transformer.load_lora_adapter`` read.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def add_lora(
    transformer: nn.Module,
    targets: Sequence[str],
    rank: int = 128,
    alpha: float | None = None,
    dropout: float = 0.0,
) -> None:
    """Wrap the ``targets`` linear layers of ``transformer`` with LoRA (B starts at zero: output unchanged)."""
    from peft import LoraConfig

    if int(rank) < 1:
        raise ValueError(f"lora.rank must be >= 1, got {rank}")
    names = {name for name, _ in transformer.named_modules()}
    found = [t for t in targets if any(n == t or n.endswith(f".{t}") for n in names)]
    if len(found) != len(targets):
        missing = sorted(set(targets) - set(found))
        raise ValueError(
            f"lora.targets {missing} match no module of the transformer; use module names such as "
            "to_q, to_k, to_v, to_out.0 (attention projections) or ff.net.2"
        )
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=float(dropout),
        init_lora_weights=True,
        target_modules=list(targets),
    )
    transformer.add_adapter(config)


def has_lora(transformer: nn.Module) -> bool:
    return any("lora_" in name for name, _ in transformer.named_parameters())


def lora_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in transformer.named_parameters() if "lora_" in name]


def lora_layers(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's module keys (``transformer_blocks.0.attn1.to_q.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def lora_adapter_metadata(transformer: nn.Module) -> dict:
    """Rank, alpha and targets of the adapter: diffusers rebuilds the same scaling from them when it loads."""
    return transformer.peft_config["default"].to_dict()


def without_lora(transformer: nn.Module, merge: bool) -> nn.Module:
    """A copy with plain layers: the base weights (``merge=False``) or base + LoRA folded in (``merge=True``)."""
    plain = copy.deepcopy(transformer)
    if has_lora(plain):
        if merge:
            plain.fuse_lora()
        plain.unload_lora()
    return plain
