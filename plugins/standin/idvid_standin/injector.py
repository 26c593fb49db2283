"""Stand-In's reference branch: a clean, isolated reference with a LoRA on its own q/k/v projections."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from idvid.backbones.info import BackboneInfo
from idvid.injection import BlockSelection, SequenceConcatInjector
from idvid.injection.injector import Conditions
from idvid.injection.sequence import PROJECTIONS
from idvid.randomness import BatchRandom
from idvid.registry import register_injector


class LowRank(nn.Module):
    """``up(down(x)) * alpha / rank`` with ``up`` at zero: adds nothing until it trains."""

    def __init__(self, width: int, rank: int, alpha: float):
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)  # peft's LoRA A initialisation
        nn.init.zeros_(self.up.weight)
        self.scale = alpha / rank

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(inputs.to(self.down.weight.dtype))) * self.scale


@register_injector("standin.reference")
class StandInReference(SequenceConcatInjector):
    """The reference face's latent as clean, isolated tokens with a LoRA on their q, k, v (site sequence_concat).

    Only the reference tokens' projections get the LoRA (``projection_residual``); the video tokens'
    projections, and so the whole video path when no reference is given, are the backbone's own. In
    ``blocks`` (default all) every block's q, k and v of the reference get a rank-``rank`` adapter (but the
    last block's q, which cannot reach the output).
    """

    consumes = ("face_latent",)

    def __init__(
        self,
        backbone: BackboneInfo,
        condition: str = "face_latent",
        rank: int = 128,
        alpha: float | None = None,
        blocks: Any = "all",
        positions: Mapping[str, Any] | None = None,
        timestep: int | str = 0,
        attention: str = "reference_isolated",
        kv_cache: bool = True,
    ):
        # Stand-In's RoPE: one frame before the video, rows and columns past the video's last ones.
        default_positions = {"frame": -1, "height_offset": "after", "width_offset": "after"}
        super().__init__(backbone, positions or default_positions, timestep, attention, kv_cache)
        if int(rank) < 1:
            raise ValueError(f"standin.reference: rank={rank}; the LoRA rank must be >= 1 (Stand-In: 128).")
        self.condition = condition
        self.consumes = (condition,)
        self.block_indices = BlockSelection(blocks).indices(backbone.num_layers)
        width, alpha = backbone.hidden_size, float(alpha if alpha is not None else rank)
        last = backbone.num_layers - 1
        # The last block's reference queries only update reference tokens, which the backbone then drops:
        # an adapter there could never change the output (nor get a gradient), so there is none.
        self.lora = nn.ModuleDict(
            {
                f"{b}_{p}": LowRank(width, int(rank), alpha)
                for b in self.block_indices
                for p in PROJECTIONS
                if not (b == last and p == "q")
            }
        )

    def reference(self, conditions: Conditions, random: BatchRandom) -> torch.Tensor:
        return conditions[self.condition]

    def projection_residual(self, block_index: int, projection: str, inputs: torch.Tensor) -> torch.Tensor | None:
        name = f"{block_index}_{projection}"
        return self.lora[name](inputs) if name in self.lora else None
