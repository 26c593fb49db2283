"""The visual driving path: ``megactor.driving_frames`` (conditioner) and ``megactor.driven_encoder`` (injector).

MegActor-Sigma encodes the driving video with a small convolutional encoder (4 layers) into motion
features at the latent grid and concatenates them with the noisy latent on channels; the backbone's
widened input layer starts the new channels at zero, so the model is unchanged at step 0.

In self-reenactment training the driving frames are the training clip itself (``video``); the
modality recipe (``idvid_megactor.modality``) writes what is left of them after face-drop and
augmentation as ``drive_video``, which this conditioner reads first. ``animate`` puts the user's
driving clip there.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from idvid.conditioning import Conditioner
from idvid.injection import InputConcatInjector
from idvid.registry import register_conditioner, register_injector
from idvid_megactor.frames import pool_video_frames


@register_conditioner("megactor.driving_frames")
class DrivingFrames(Conditioner):
    """``driving_frames`` ``[B, F, 3, H, W]`` in [-1, 1]: ``drive_video`` when the batch has it, else ``video``."""

    produces = ("driving_frames",)
    reads = ("video",)  # training: the clip (the recipe derives drive_video from it); `animate` gives drive_video

    def forward(self, batch: Mapping[str, Any], backbone, random) -> dict[str, Any]:
        frames = batch["drive_video"] if "drive_video" in batch else batch["video"]
        return {"driving_frames": frames.float()}


@register_injector("megactor.driven_encoder")
class DrivenEncoder(InputConcatInjector):
    """4 convolutions (3 of stride 2) turn each driving frame into ``channels`` motion maps at the latent grid;
    each latent frame gets the mean of the maps of the video frames it covers."""

    consumes = ("driving_frames",)

    def __init__(self, backbone, channels: int = 16, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__(backbone, channels=channels)
        first, second, third = widths
        self.layers = nn.Sequential(
            nn.Conv2d(3, first, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(first, second, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(second, third, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(third, channels, 3, padding=1),
        )

    def concat_latents(self, conditions, noisy_latents):
        frames = conditions["driving_frames"].to(noisy_latents)  # [B, F, 3, H, W]
        batch, num_frames = frames.shape[:2]
        height, width = noisy_latents.shape[-2:]
        features = self.layers(frames.flatten(0, 1))
        if features.shape[-2:] != (height, width):  # a VAE whose compression is not 8: resize to its grid
            features = nn.functional.interpolate(features, size=(height, width), mode="bilinear", align_corners=False)
        features = features.view(batch, num_frames, self.channels, height, width)
        return pool_video_frames(features, self.backbone_info)
