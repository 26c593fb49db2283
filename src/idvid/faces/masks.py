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


def box_ellipse_mask(shape_hw: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """uint8 {0,1} mask [H, W]: the ellipse inscribed in a face box.

    The mask for backends whose faces have no 68 landmarks (insightface); coarser than
    landmark_hull_mask, and no stand-in for a face-parsing model.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
    mask = np.zeros((int(shape_hw[0]), int(shape_hw[1])), dtype=np.uint8)
    centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
    axes = (int(round((x1 - x0) / 2)), int(round((y1 - y0) / 2)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask


def whiten_background(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of `crop` with every pixel outside `mask` (mask == 0) set to white (255)."""
    if crop.shape[:2] != mask.shape[:2]:
        raise ValueError(f"crop {crop.shape[:2]} and mask {mask.shape[:2]} must have the same height and width")
    out = crop.copy()
    out[np.asarray(mask) == 0] = 255
    return out
