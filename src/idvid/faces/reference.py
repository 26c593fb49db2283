"""The reference images a model is conditioned on, made the same way for training and sampling.

Two steps, so the costly one can run once in preprocessing: ``align_reference`` warps a frame's
face to ALIGN_SIZE and whitens its background (the warps at 512 px are most of the cost);
``sized_reference`` resizes that crop to the model's size and draws its keypoints.
``reference_images`` does both, for a photo at sampling time.
"""

from __future__ import annotations

import cv2
import numpy as np

from idvid.faces.align import align_face, transform_points
from idvid.faces.draw import draw_kps
from idvid.faces.masks import whiten_background

# Faces are aligned at ConsisID's 512 and then resized to the model's size.
ALIGN_SIZE = 512
NUM_LANDMARKS = 68  # the iBUG layout dlib gives; backends without it give none


def align_reference(frame: np.ndarray, kps: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aligned face with white background ``[ALIGN_SIZE, ALIGN_SIZE, 3]`` uint8, 2x3 matrix frame -> crop).

    ``frame`` is the RGB image, ``kps`` its face's 5 ArcFace-order keypoints and ``mask`` that
    face's {0,1} mask at the frame's resolution.
    """
    crop, matrix = align_face(frame, kps, ALIGN_SIZE)
    aligned_mask = cv2.warpAffine(mask, matrix, (ALIGN_SIZE, ALIGN_SIZE), flags=cv2.INTER_NEAREST, borderValue=0)
    return whiten_background(crop, aligned_mask), matrix


def reference_points(points: np.ndarray, matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frame pixel coordinates ``[N, 2]`` -> pixel coordinates of the ``height x width`` reference image."""
    scale = np.array([width / ALIGN_SIZE, height / ALIGN_SIZE], dtype=np.float32)
    return transform_points(points, matrix) * scale


def reference_box(box: np.ndarray, matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """The face box x0, y0, x1, y1 in the reference image: the bounds of its four corners after alignment
    (the alignment rotates, so the box itself does not stay a box)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float32)
    corners = reference_points(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32), matrix, height, width)
    return np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)


def reference_annotations(
    kps: np.ndarray, landmarks: np.ndarray | None, box: np.ndarray, matrix: np.ndarray, height: int, width: int
) -> dict[str, np.ndarray]:
    """The reference face's points in the ``height x width`` reference image, float32:
    ``kps`` [5, 2] (the drawn keypoints), ``landmarks`` [68, 2] (NaN when the backend gives no 68
    landmarks: ``landmarks`` None or of another length) and ``box`` [4] (see reference_box)."""
    has_landmarks = landmarks is not None and np.shape(landmarks) == (NUM_LANDMARKS, 2)
    return {
        "kps": reference_points(kps, matrix, height, width),
        "landmarks": (
            reference_points(landmarks, matrix, height, width)
            if has_landmarks
            else np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
        ),
        "box": reference_box(box, matrix, height, width),
    }


def sized_reference(
    aligned_face: np.ndarray, kps: np.ndarray, matrix: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(``aligned_face`` resized to ``[height, width, 3]``, the drawing of ``kps`` at that size), uint8 RGB."""
    face = cv2.resize(aligned_face, (width, height), interpolation=cv2.INTER_AREA)
    # Draw at the output size (crisper than drawing large and shrinking).
    return face, draw_kps((height, width), reference_points(kps, matrix, height, width))


def reference_images(
    frame: np.ndarray, kps: np.ndarray, mask: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(aligned face with white background, its 5-keypoint drawing), both uint8 RGB ``[height, width, 3]``."""
    aligned_face, matrix = align_reference(frame, kps, mask)
    return sized_reference(aligned_face, kps, matrix, height, width)
