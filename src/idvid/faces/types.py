"""Face record and the analyzer protocol shared by every face backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# Names of the 5 keypoints, in ArcFace order ("left" = image-left).
KPS_NAMES = ("left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth")


@dataclass
class Face:
    """One detected face.

    box: (x0, y0, x1, y1) in pixels; score: detector confidence (backend-specific scale);
    kps: [5, 2] float32 in ArcFace order; landmarks: [68, 2] float32 or None.
    """

    box: tuple[float, float, float, float]
    score: float
    kps: np.ndarray
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Detects faces and computes identity embeddings on RGB uint8 images."""

    embedding_dim: int

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in `image` (H, W, 3 RGB uint8), largest first."""
        ...

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Return the L2-normalised float32 identity embedding of `face`."""
        ...


def check_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 image and return it C-contiguous (dlib needs that)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{type(image).__name__} {getattr(image, 'dtype', '?')} {getattr(image, 'shape', '?')}"
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {desc}; "
            "convert with np.asarray(img, dtype=np.uint8) (and cv2.cvtColor for BGR)"
        )
    return np.ascontiguousarray(image)
