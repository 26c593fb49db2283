"""Face regions from the 68 iBUG landmarks: the eyes' and the mouth's boxes (for region masks, lip crops).

iBUG 68 layout: 36-41 one eye, 42-47 the other, 48-67 the mouth (outer lip line then inner).
"""

from __future__ import annotations

import numpy as np

EYE_LANDMARKS = slice(36, 48)  # both eyes
MOUTH_LANDMARKS = slice(48, 68)


def landmark_box(points: np.ndarray) -> np.ndarray:
    """[..., N, 2] points -> [..., 4] float32 x0, y0, x1, y1 bounds; NaN where any point is NaN."""
    points = np.asarray(points, dtype=np.float32)
    boxes = np.concatenate([points.min(axis=-2), points.max(axis=-2)], axis=-1)  # NaN propagates
    return boxes.astype(np.float32)


def region_boxes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eye boxes, mouth boxes), each [..., 4] xyxy, from [..., 68, 2] landmarks (NaN where no landmarks).

    The eye box is the union of both eyes' landmarks; the mouth box bounds the 20 lip landmarks.
    Landmarks of another layout (insightface gives none: [..., 0, 2]) give NaN boxes.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape[-2] != 68:
        nan = np.full((*landmarks.shape[:-2], 4), np.nan, np.float32)
        return nan, nan.copy()
    return landmark_box(landmarks[..., EYE_LANDMARKS, :]), landmark_box(landmarks[..., MOUTH_LANDMARKS, :])
