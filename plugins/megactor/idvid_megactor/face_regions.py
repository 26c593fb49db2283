"""Eye and mouth regions of each frame, as boxes and as pixel masks (MegActor-Sigma's face-drop).

The data carries ``frame_eye_boxes`` / ``frame_mouth_boxes`` (``[B, F, 4]`` xyxy pixels, NaN where the
frame has no face; the kit's audio interface). Data made before those keys existed has the 68
landmarks they are computed from (``frame_landmarks``, iBUG order): the same boxes are derived here.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from idvid.errors import ConfigError

EYE_POINTS = slice(36, 48)  # both eyes, iBUG 68-point order
MOUTH_POINTS = slice(48, 68)  # outer and inner lips


def landmark_box(landmarks: torch.Tensor) -> torch.Tensor:
    """``[..., 68, 2]`` points (a slice of them) -> ``[..., 4]`` their xyxy bounds (NaN where the points are)."""
    low, high = landmarks.min(dim=-2).values, landmarks.max(dim=-2).values
    return torch.cat([low, high], dim=-1)


def region_boxes(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eye_boxes, mouth_boxes)`` ``[B, F, 4]``: the batch's boxes, or derived from its 68 landmarks."""
    if "frame_eye_boxes" in batch and "frame_mouth_boxes" in batch:
        return batch["frame_eye_boxes"].float(), batch["frame_mouth_boxes"].float()
    if "frame_landmarks" not in batch:
        raise ConfigError(
            "MegActor-Sigma's face-drop needs each frame's eye and mouth regions; the batch has neither "
            "frame_eye_boxes/frame_mouth_boxes nor frame_landmarks.",
            "Preprocess the clips with a face backend that gives the 68 landmarks (face=dlib), or remove the "
            "megactor.modality_control recipe step.",
        )
    landmarks = batch["frame_landmarks"].float()
    return landmark_box(landmarks[..., EYE_POINTS, :]), landmark_box(landmarks[..., MOUTH_POINTS, :])


def box_masks(boxes: torch.Tensor, height: int, width: int, margin: float = 0.0) -> torch.Tensor:
    """``[B, F, 4]`` xyxy pixel boxes -> ``[B, F, 1, H, W]`` {0, 1} masks of the pixels they cover.

    Each box grows by ``margin`` times its size on every side (landmark boxes hug the eyes and lips);
    a NaN box (no face) covers nothing.
    """
    x0, y0, x1, y1 = boxes.unbind(-1)
    grow_x, grow_y = margin * (x1 - x0), margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - grow_x, x1 + grow_x, y0 - grow_y, y1 + grow_y
    columns = torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5  # pixel centres
    rows = torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5
    inside_x = (columns >= x0.unsqueeze(-1)) & (columns <= x1.unsqueeze(-1))  # [B, F, W]; NaN compares False
    inside_y = (rows >= y0.unsqueeze(-1)) & (rows <= y1.unsqueeze(-1))  # [B, F, H]
    return (inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2)).unsqueeze(2).float()
