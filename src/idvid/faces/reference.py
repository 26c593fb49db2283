"""The reference images a model is conditioned on, made the same way for training and sampling."""

from __future__ import annotations

import cv2
import numpy as np

from idvid.faces.align import align_face, transform_points
from idvid.faces.draw import draw_kps
from idvid.faces.masks import whiten_background

# Faces are aligned at ConsisID's 512 and then resized to the model's size.
ALIGN_SIZE = 512


def reference_images(
    frame: np.ndarray, kps: np.ndarray, mask: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(aligned face with white background, its 5-keypoint drawing), both uint8 RGB ``[height, width, 3]``.

    ``frame`` is the RGB image, ``kps`` its face's 5 ArcFace-order keypoints and ``mask`` that
    face's {0,1} mask at the frame's resolution.
    """
    crop, matrix = align_face(frame, kps, ALIGN_SIZE)
    aligned_mask = cv2.warpAffine(mask, matrix, (ALIGN_SIZE, ALIGN_SIZE), flags=cv2.INTER_NEAREST, borderValue=0)
    face = cv2.resize(whiten_background(crop, aligned_mask), (width, height), interpolation=cv2.INTER_AREA)
    # Draw at the output size (crisper than drawing large and shrinking).
    kps_out = transform_points(kps, matrix) * np.array([width / ALIGN_SIZE, height / ALIGN_SIZE], dtype=np.float32)
    return face, draw_kps((height, width), kps_out)
