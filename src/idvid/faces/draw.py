"""Keypoint rendering used as a spatial condition image (InstantID-style)."""

from __future__ import annotations

import math

import cv2
import numpy as np

# One colour per keypoint (ArcFace order); limbs take the colour of their outer point.
KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
NOSE = 2


def draw_kps(shape_hw: tuple[int, int], kps: np.ndarray) -> np.ndarray:
    """Black RGB uint8 canvas with limbs nose -> each other point and a disc per point.

    Stroke width and disc radius scale with the canvas (4 px and 10 px at 512 px, like
    InstantID at its usual resolution) so the picture looks the same at any size.
    """
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"kps must have shape (5, 2), got {kps.shape}")
    height, width = int(shape_hw[0]), int(shape_hw[1])
    scale = min(height, width) / 512.0
    stick = max(1, round(4 * scale))
    radius = max(1, round(10 * scale))
    limbs = np.zeros((height, width, 3), dtype=np.uint8)
    for idx in (0, 1, 3, 4):
        (xa, ya), (xb, yb) = kps[idx], kps[NOSE]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        centre = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
        poly = cv2.ellipse2Poly(centre, (int(round(length / 2)), stick), int(round(angle)), 0, 360, 1)
        cv2.fillConvexPoly(limbs, poly, KPS_COLORS[idx])
    # Dim the limbs so the keypoint discs stand out, as InstantID does.
    canvas = (limbs.astype(np.float32) * 0.6).astype(np.uint8)
    for idx, (x, y) in enumerate(kps):
        cv2.circle(canvas, (int(round(x)), int(round(y))), radius, KPS_COLORS[idx], -1)
    return canvas
