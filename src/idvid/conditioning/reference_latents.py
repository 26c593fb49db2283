"""VAE latents of the reference face and its keypoint drawing (the low-frequency identity signal)."""

from __future__ import annotations

from typing import Any, Mapping

from idvid.conditioning.base import Conditioner
from idvid.randomness import BatchRandom
from idvid.registry import register_conditioner


@register_conditioner("reference_latents")
class ReferenceLatents(Conditioner):
    """``face_latent`` and ``kps_latent``: one latent frame each, ``[B, 1, C, h, w]``.

    Reads ``ref_image`` and ``ref_kps_image`` (``[B, 3, H, W]`` in [-1, 1], the video's
    size). During training the recipe may add ``ref_image_noisy`` (the reference with
    Gaussian noise); when present it is what the VAE encodes.
    """

    produces = ("face_latent", "kps_latent")
    reads = ("ref_image", "ref_kps_image")  # (+ ref_image_noisy when a recipe step adds it)

    def forward(self, batch: Mapping[str, Any], backbone, random: BatchRandom) -> dict[str, Any]:
        image = batch.get("ref_image_noisy", batch["ref_image"])
        face_latent = backbone.encode_video(image.unsqueeze(1), random)
        kps_latent = backbone.encode_video(batch["ref_kps_image"].unsqueeze(1), random)
        return {"face_latent": face_latent, "kps_latent": kps_latent}
