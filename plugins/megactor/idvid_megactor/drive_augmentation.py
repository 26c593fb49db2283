"""``megactor.drive_augmentation``: augmentations of the driving frames against identity leakage.

In self-reenactment training the driving frames *are* the target person, so a model can copy their
identity instead of the reference's. MegActor-Sigma breaks that shortcut with changes of the driving
frames that keep the motion: here resolution changes (down- then up-sampling), resizing (a random
stretch of the frame about its centre, each axis on its own) and colour (brightness, contrast,
saturation). The paper also swaps faces and stylises the driving frames, which needs external
models (a face-swap and a stylisation network): not done offline.

Acts on ``drive_video`` (after ``megactor.modality_control``; the clip's ``video`` when that step is
off). Each augmentation applies to a sample with its probability, the same to all its frames; every
draw goes through the step's ``BatchRandom`` whatever the probabilities, so resume stays exact.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from idvid.registry import register_recipe_step
from idvid.training.recipe import RecipeStep, check_probability


def _range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if value is None or len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ConfigError(
            f"recipe step megactor.drive_augmentation: {name}={value} is not a range [min, max] in [{low}, {high}].",
            f"Give {name}=[min, max] with {low} <= min <= max <= {high}.",
        )
    return float(value[0]), float(value[1])


def _uniform(draw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * draw


@register_recipe_step("megactor.drive_augmentation")
class DriveAugmentation(RecipeStep):
    def __init__(
        self,
        resolution_probability: float = 0.3,
        resolution_scale: Sequence[float] = (0.25, 0.75),
        resize_probability: float = 0.3,
        resize_scale: Sequence[float] = (0.85, 1.15),
        colour_probability: float = 0.5,
        brightness: Sequence[float] = (-0.2, 0.2),
        contrast: Sequence[float] = (0.7, 1.3),
        saturation: Sequence[float] = (0.5, 1.5),
    ):
        step = "megactor.drive_augmentation"
        self.resolution_probability = check_probability(step, "resolution_probability", resolution_probability)
        self.resize_probability = check_probability(step, "resize_probability", resize_probability)
        self.colour_probability = check_probability(step, "colour_probability", colour_probability)
        self.resolution_scale = _range("resolution_scale", resolution_scale, 0.05, 1.0)
        self.resize_scale = _range("resize_scale", resize_scale, 0.1, 10.0)
        self.brightness = _range("brightness", brightness, -1.0, 1.0)
        self.contrast = _range("contrast", contrast, 0.0, 10.0)
        self.saturation = _range("saturation", saturation, 0.0, 10.0)

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        video = batch["drive_video"] if "drive_video" in batch else batch["video"]
        size = video.shape[0]
        # All draws first, in a fixed order, whatever the probabilities.
        lower_resolution = random.coin(self.resolution_probability, size)
        resolution = _uniform(random.rand(size), self.resolution_scale)
        resize = random.coin(self.resize_probability, size)
        stretch = _uniform(random.rand(size, 2), self.resize_scale)
        colour = random.coin(self.colour_probability, size)
        shifts = random.rand(size, 3)
        brightness, contrast = _uniform(shifts[:, 0], self.brightness), _uniform(shifts[:, 1], self.contrast)
        saturation = _uniform(shifts[:, 2], self.saturation)

        frames = [video[i] for i in range(size)]  # [F, 3, H, W] each
        for i in range(size):
            if lower_resolution[i]:
                frames[i] = self.lower_resolution(frames[i], float(resolution[i]))
            if resize[i]:
                frames[i] = self.stretch(frames[i], float(stretch[i, 0]), float(stretch[i, 1]))
            if colour[i]:
                frames[i] = self.colour(frames[i], float(brightness[i]), float(contrast[i]), float(saturation[i]))
        batch["drive_video"] = torch.stack(frames).clamp(-1, 1)
        return batch

    @staticmethod
    def lower_resolution(frames: torch.Tensor, scale: float) -> torch.Tensor:
        height, width = frames.shape[-2:]
        small = F.interpolate(frames, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="area")
        return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)

    @staticmethod
    def stretch(frames: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
        """Each frame magnified ``scale_x`` / ``scale_y`` times about its centre (zero padding where it shrinks)."""
        theta = torch.tensor([[1 / scale_x, 0.0, 0.0], [0.0, 1 / scale_y, 0.0]], dtype=frames.dtype)
        grid = F.affine_grid(theta.expand(frames.shape[0], 2, 3).to(frames.device), frames.shape, align_corners=False)
        return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def colour(frames: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
        grey = (0.299 * frames[:, 0] + 0.587 * frames[:, 1] + 0.114 * frames[:, 2]).unsqueeze(1)
        frames = grey + saturation * (frames - grey)
        mean = frames.mean(dim=(1, 2, 3), keepdim=True)
        return mean + contrast * (frames - mean) + brightness
