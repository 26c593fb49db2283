"""Landmark-based face mask: the offline fallback when no face-parsing model is available."""

from __future__ import annotations

import cv2
import numpy as np

# How far above the brows the forehead reaches, as a fraction of the chin-to-brow distance.
# Anatomically the forehead is about half the chin-to-brow height.
FOREHEAD_FRACTION = 0.5


def landmark_hull_mask(shape_hw: tuple[int, int], landmarks68: np.ndarray) -> np.ndarray:
    """uint8 {0,1} mask [H, W]: convex hull of the 68 landmarks plus a forehead extension.

    The 68 iBUG points stop at the eyebrows, so the brow points (17-26) are copied upward
    along the face's own vertical axis (chin -> brow centre), which keeps the mask right
    when the head is tilted.
    """
    lm = np.asarray(landmarks68, dtype=np.float32)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape (68, 2), got {lm.shape}")
    height, width = int(shape_hw[0]), int(shape_hw[1])
    brows = lm[17:27]
    chin = lm[8]
    up = brows.mean(0) - chin
    forehead = brows + up * FOREHEAD_FRACTION
    points = np.concatenate([lm, forehead]).round().astype(np.int32)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points), 1)
    return mask


def whiten_background(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of `crop` with every pixel outside `mask` (mask == 0) set to white (255)."""
    if crop.shape[:2] != mask.shape[:2]:
        raise ValueError(f"crop {crop.shape[:2]} and mask {mask.shape[:2]} must have the same height and width")
    out = crop.copy()
    out[np.asarray(mask) == 0] = 255
    return out
