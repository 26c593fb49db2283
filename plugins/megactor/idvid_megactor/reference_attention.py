"""``megactor.reference_attention``: the reference transformer's features enter the last blocks by cross-attention.

MegActor-Sigma's reference transformer is a copy of the denoising DiT run over the reference portrait;
the spatial features of its blocks enter the denoising DiT's last 16 (of 28) blocks through
cross-attention. The pass itself is the kit's ``reference_pass`` conditioner (``trainable: true``: its
own copy of the transformer, trained with the plan, as MegActor-Sigma trains it; ``false``: the
backbone's own weights, frozen), which produces ``reference_features`` ``{block: [B, N_ref, D]}``. This
injector is the method's part: in each of its blocks the video tokens attend to the reference's tokens
of the same block, with a zero-initialised output projection, so the model is unchanged at step 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from idvid.errors import ConfigError
from idvid.injection import TokenInjector
from idvid.registry import register_injector
from idvid_megactor.audio_attention import FrameCrossAttention


@register_injector("megactor.reference_attention")
class ReferenceAttention(TokenInjector):
    """The video tokens of block i attend to the reference pass's tokens of block i (residual, zero-initialised)."""

    consumes = ("reference_features",)

    def __init__(self, backbone, site: str = "attn_ffn", blocks: Any = None, heads: int = 2):
        # MegActor-Sigma: the last 16 blocks (of 28); all of them on a backbone with fewer
        super().__init__(backbone, site=site, blocks={"last": 16} if blocks is None else blocks)
        hidden = backbone.hidden_size
        self.attention = nn.ModuleList(FrameCrossAttention(hidden, hidden, heads) for _ in self.block_indices)
        self.slot = {block: i for i, block in enumerate(self.block_indices)}

    def prepare(self, conditions, random) -> dict[int, torch.Tensor]:
        features = conditions["reference_features"]
        missing = [block for block in self.block_indices if block not in features]
        if missing:
            raise ConfigError(
                f"megactor.reference_attention acts on blocks {missing}, but the reference pass recorded only "
                f"blocks {sorted(features)}.",
                "Give the reference_pass conditioner the same `blocks` as this injector (e.g. {last: 16} for both).",
            )
        return {block: features[block] for block in self.block_indices}

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared) -> torch.Tensor:
        reference = prepared[block_index].to(hidden_states.dtype)
        return self.attention[self.slot[block_index]](hidden_states, reference)
