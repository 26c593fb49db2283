"""5-point similarity alignment of a face to a fixed template (ArcFace layout, with margin)."""

from __future__ import annotations

import cv2
import numpy as np

# Standard ArcFace 112x112 template: left eye, right eye, nose tip, left/right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

# The ArcFace template crops tightly (chin and hair cut off). Reference images for
# identity conditioning want the whole head, like ConsisID's head crop expanded ~20%,
# so the template is shrunk toward the crop centre: the face then spans ~60% of the
# crop and hair, chin and some background fit around it.
HEAD_MARGIN_SCALE = 0.6


def face_template(size: int, margin_scale: float = HEAD_MARGIN_SCALE) -> np.ndarray:
    """Template keypoints [5, 2] for a size x size crop: ArcFace * size/112, shrunk toward the centre."""
    centre = size / 2.0
    points = ARCFACE_TEMPLATE_112 * (size / 112.0)
    return ((points - centre) * margin_scale + centre).astype(np.float32)


def align_face(
    image: np.ndarray,
    kps: np.ndarray,
    size: int = 512,
    margin_scale: float = HEAD_MARGIN_SCALE,
    border_value: int | tuple[int, ...] = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp `image` so `kps` land on `face_template(size)`; returns (crop [size,size,C], M 2x3).

    M maps image pixel coordinates to crop coordinates (apply it to masks / points too).
    """
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise ValueError(f"kps must be a finite [5, 2] array in ArcFace order, got shape {kps.shape}: {kps.tolist()}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    template = face_template(size, margin_scale)
    matrix, _ = cv2.estimateAffinePartial2D(kps, template, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError(f"could not fit a similarity transform to kps {kps.tolist()} (degenerate points?)")
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border_value
    )
    return crop, matrix.astype(np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to [N, 2] points."""
    points = np.asarray(points, dtype=np.float64)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
