"""Motion control of driving frames (MegActor-Sigma's "motion scale", usable by any video-driven model).

From each frame's 5 facial keypoints (eyes, nose tip, mouth corners: the rigid part of the face, so that
an opening mouth does not read as head motion) the least-squares similarity transform from the first
frame to that frame is found: rotation angle theta, scale s and the shift of the keypoints' centre d.
``motion_scale`` A makes it angle A * theta, scale s ** A (scale is multiplied, so it is scaled in log
space) and shift A * d, about the first frame's keypoint centre; each frame is warped by the scaled
transform composed with the inverse of its own. A = 1 leaves every frame as it is; A = 0 brings every
face back to the first frame's pose and place; A = 2 doubles the head motion.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(angle, scale, source centre, target centre) of the least-squares similarity source -> target points.

    target ~= scale * R(angle) @ (source - source centre) + target centre.
    """
    source_centre, target_centre = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_centre, target - target_centre
    norm = max(float((s**2).sum()), 1e-12)
    a = float((s * t).sum()) / norm
    b = float((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / norm
    return math.atan2(b, a), math.hypot(a, b), source_centre, target_centre


def _matrix(angle: float, scale: float, origin: np.ndarray, destination: np.ndarray) -> np.ndarray:
    """3 x 3 homogeneous matrix of x -> scale * R(angle) (x - origin) + destination."""
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rotation
    matrix[:2, 2] = destination - rotation @ origin
    return matrix


def motion_warps(kps: np.ndarray, motion_scale: float) -> np.ndarray:
    """[T, 2, 3] affine warps (frame t's pixels -> its motion-scaled pixels) from [T, 5, 2] keypoints.

    Frames without a face (NaN keypoints), and every frame when the first has none, are not warped.
    """
    warps = np.tile(np.eye(3)[:2], (len(kps), 1, 1))
    if not np.isfinite(kps[0]).all():
        return warps
    for t in range(1, len(kps)):
        if not np.isfinite(kps[t]).all():
            continue
        angle, scale, first_centre, centre = similarity_transform(kps[0], kps[t])
        actual = _matrix(angle, scale, first_centre, centre)
        shift = first_centre + motion_scale * (centre - first_centre)
        scaled = _matrix(motion_scale * angle, scale**motion_scale, first_centre, shift)
        warps[t] = (scaled @ np.linalg.inv(actual))[:2]
    return warps


def apply_warps(frames: np.ndarray, points: list[np.ndarray], warps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Warp [T, H, W, 3] frames and each [T, N, 2] point array by per-frame [T, 2, 3] warps.

    A warp equal to the identity leaves its frame untouched (bit for bit).
    """
    frames, points = frames.copy(), [p.copy() for p in points]
    height, width = frames.shape[1:3]
    identity = np.eye(3)[:2]
    for t, warp in enumerate(warps):
        if np.allclose(warp, identity, atol=1e-9):
            continue
        frames[t] = cv2.warpAffine(frames[t], warp, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        for array in points:
            array[t] = array[t] @ warp[:, :2].T + warp[:, 2]
    return frames, points
