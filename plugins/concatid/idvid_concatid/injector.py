"""Concat-ID's reference: the face latent appended to the video's token sequence."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from idvid.backbones.info import BackboneInfo
from idvid.injection import SequenceConcatInjector
from idvid.injection.injector import Conditions
from idvid.randomness import BatchRandom
from idvid.registry import register_injector


@register_injector("concatid.reference")
class ConcatIdReference(SequenceConcatInjector):
    """The reference face's latent ``[B, 1, C, h, w]`` as extra tokens after the video (site sequence_concat).

    Concat-ID concatenates the clean reference latent to the video latents along frames and runs the
    DiT's 3D self-attention over both, with no new module: here that is full attention, the reference
    one frame after the video's last (``positions.frame: after``) and modulated with the video's timestep.
    It has no parameters: what learns to read the reference is the backbone (all, or LoRA).
    """

    consumes = ("face_latent",)

    def __init__(
        self,
        backbone: BackboneInfo,
        condition: str = "face_latent",
        positions: Mapping[str, Any] | None = None,
        timestep: int | str = "video",
        attention: str = "full",
        kv_cache: bool = False,
    ):
        super().__init__(backbone, positions or {"frame": "after"}, timestep, attention, kv_cache)
        self.condition = condition
        self.consumes = (condition,)

    def reference(self, conditions: Conditions, random: BatchRandom) -> torch.Tensor:
        return conditions[self.condition]
