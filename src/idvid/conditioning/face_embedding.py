"""The face backend's identity embedding of the reference as a condition, for any identity method."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from idvid.conditioning.base import Conditioner
from idvid.randomness import BatchRandom
from idvid.registry import register_conditioner


@register_conditioner("face_embedding")
class FaceEmbedding(Conditioner):
    """``face_embedding`` ``[B, D]``: the reference's identity embedding from the face backend.

    Reads ``ref_embedding`` (dlib: D = 128, insightface's ArcFace: D = 512), which the data set
    and ``sample`` both provide, so it runs at training and at sampling time. ``normalize``
    rescales each embedding to unit length (backends differ in scale; cosine is what they are
    trained for).
    """

    produces = ("face_embedding",)
    reads = ("ref_embedding",)

    def __init__(self, backbone, normalize: bool = False):
        super().__init__(backbone)
        self.normalize = normalize

    def forward(self, batch: Mapping[str, Any], backbone, random: BatchRandom) -> dict[str, Any]:
        embedding = batch["ref_embedding"].float()
        if embedding.dim() != 2:
            raise ValueError(
                f"ref_embedding has shape {tuple(embedding.shape)}; face_embedding expects [B, D] (one identity "
                f"embedding per sample, as the data set and `sample` provide)."
            )
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, dim=-1)
        return {"face_embedding": embedding}
