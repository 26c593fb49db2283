"""Offline subject masks for the masked loss when no text-prompted segmenter is given.

Both read the face points the kit's data set puts in every batch (``frame_landmarks``, ``frame_boxes``,
``frame_kps``: the video's pixels, NaN where a frame has no face) and give ``[B, F, 1, H, W]`` {0, 1}:

* ``HeadMasks``: the face backend's landmark hull (with its forehead extension) grown about its centre
  to cover the head (hair, ears), or the face box's ellipse grown alike where there are no 68 landmarks;
* ``ParsedHeadMasks``: facexlib's BiSeNet face parser (``idvid.faces.parsing``) on each frame, keeping
  the face and hair classes (the head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from idvid.errors import ConfigError
from idvid.faces import Face, box_ellipse_mask, landmark_hull_mask
from idvid.faces.parsing import FACE_AND_HAIR_CLASSES, BiSeNet, FaceParser

POINT_KEYS = ("frame_boxes", "frame_kps", "frame_landmarks")


def _points(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    missing = [key for key in POINT_KEYS if key not in batch]
    if missing:
        raise ConfigError(
            f"The subject mask's head fallback needs the batch's face points {missing}; this data has none.",
            "Train on a data set made by preprocess (its manifest's annotations), or give "
            "recipe.<label>.segmenter=CLIPSEG_FOLDER or fallback=face_mask.",
        )
    return {key: batch[key].detach().cpu().float().numpy() for key in POINT_KEYS}


class HeadMasks:
    """The landmark hull (or box ellipse) of each frame's face, grown ``scale`` times about its centre."""

    def __init__(self, scale: float = 1.5):
        if scale < 1.0:
            raise ConfigError(
                f"recipe step magicme.subject_mask_loss: head_scale={scale} is below 1.",
                "It grows the face's landmark hull to the head (e.g. 1.5); 1 keeps the face alone.",
            )
        self.scale = scale
        self.source = f"head_mask:landmark_hull_x{scale:g}"

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        video = batch["video"]
        batch_size, frames, _, height, width = video.shape
        points = _points(batch)
        masks = np.zeros((batch_size, frames, 1, height, width), np.float32)
        for b in range(batch_size):
            for f in range(frames):
                landmarks, box = points["frame_landmarks"][b, f], points["frame_boxes"][b, f]
                if np.isfinite(landmarks).all():
                    centre = landmarks.mean(0)
                    masks[b, f, 0] = landmark_hull_mask((height, width), centre + self.scale * (landmarks - centre))
                elif np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]:
                    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * self.scale
                    masks[b, f, 0] = box_ellipse_mask((height, width), (*(centre - half), *(centre + half)))
        return torch.from_numpy(masks).to(video.device)


class ParsedHeadMasks:
    """BiSeNet face parsing of every frame with a face, keeping the face and hair classes."""

    def __init__(self, weights: str | Path | None, width: int = 64):
        if not weights:
            raise ConfigError(
                "recipe step magicme.subject_mask_loss: fallback=parser needs parser_weights.",
                "Give recipe.<label>.parser_weights=/path/to/parsing_bisenet.pth (facexlib's, copied to this "
                "machine), or fallback=head for the landmark-hull head mask.",
            )
        self.parser = FaceParser(weights, face_classes=FACE_AND_HAIR_CLASSES, network=BiSeNet(width=width))
        self.source = f"bisenet:{Path(weights).name}"

    def __call__(self, batch: Mapping[str, Any]) -> torch.Tensor:
        video = batch["video"]
        batch_size, frames, _, height, width = video.shape
        points = _points(batch)
        pixels = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pixels = pixels.permute(0, 1, 3, 4, 2).numpy()
        masks = np.zeros((batch_size, frames, 1, height, width), np.float32)
        for b in range(batch_size):
            for f in range(frames):
                kps, box = points["frame_kps"][b, f], points["frame_boxes"][b, f]
                if np.isfinite(kps).all() and np.isfinite(box).all():
                    face = Face(box=tuple(float(v) for v in box), score=1.0, kps=kps)
                    masks[b, f, 0] = self.parser.parse_mask(pixels[b, f], face)
        return torch.from_numpy(masks).to(video.device)


__all__ = ["HeadMasks", "ParsedHeadMasks"]
