"""Identity similarity between a reference photo and the faces of a generated video.

The protocol is ConsisID's official one: 16 frames sampled evenly, the largest face of each,
an embedding of that face, the cosine with the reference's embedding clamped at 0, frames
without a face skipped (and counted). Any detector that follows ``idvid.faces.FaceAnalyzer``
finds the faces; any ``FaceEmbedder`` embeds them, so FaceSim-Arc (insightface), FaceSim-Cur
(CurricularFace on the aligned 112 crop) and the offline dlib score share this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np
import torch

from idvid.faces import Face, FaceAnalyzer, align_face

# The official script samples this many frames per video.
OFFICIAL_NUM_FRAMES = 16
# A reference whose face is too close to the border is found again on a grey-padded copy,
# as the official script does (pad by a quarter of the size on every side).
REFERENCE_PAD_SCALE = 1.25


class FaceEmbedder(Protocol):
    """Embeds a detected face of an RGB uint8 image into an L2-normalised vector."""

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray: ...


def evenly_sampled_indices(total: int, count: int = OFFICIAL_NUM_FRAMES) -> np.ndarray:
    """``count`` frame indices spread evenly from the first to the last frame (floor, as the official script)."""
    if total < 1:
        raise ValueError(f"a video needs at least one frame, got {total}")
    return np.unique(np.linspace(0, total - 1, count).astype(int))


def arcface_crop(image: np.ndarray, face: Face, size: int = 112) -> np.ndarray:
    """The face warped onto the ArcFace template (``ARCFACE_TEMPLATE_112`` scaled to ``size``): the tight crop
    face recognisers expect."""
    crop, _ = align_face(image, face.kps, size=size, margin_scale=1.0)
    return crop


def largest_faces(analyzer: FaceAnalyzer, frames: Sequence[np.ndarray]) -> list[Face | None]:
    """The largest detected face of each frame, or None where there is none."""
    result = []
    for frame in frames:
        faces = analyzer.detect(np.ascontiguousarray(frame))
        result.append(max(faces, key=lambda f: f.area) if faces else None)
    return result


def reference_face(analyzer: FaceAnalyzer, image: np.ndarray) -> tuple[np.ndarray, Face] | None:
    """(image, largest face) of a reference photo; retried on a grey-padded copy; None when no face is found."""
    faces = analyzer.detect(image)
    if not faces:
        height, width = image.shape[:2]
        pad_y, pad_x = int(height * (REFERENCE_PAD_SCALE - 1)), int(width * (REFERENCE_PAD_SCALE - 1))
        image = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        faces = analyzer.detect(image)
    if not faces:
        return None
    return image, max(faces, key=lambda f: f.area)


@dataclass
class IdentityScore:
    """Mean clamped cosine over the frames with a face (NaN when none had one)."""

    score: float
    frames_used: int
    frames_skipped: int


def identity_similarity(
    embedder: FaceEmbedder,
    reference_image: np.ndarray,
    reference: Face,
    frames: Sequence[np.ndarray],
    faces: Sequence[Face | None],
) -> IdentityScore:
    """Cosine (clamped at 0) between the reference's embedding and each frame's face, averaged."""
    anchor = embedder.embed(reference_image, reference)
    scores = [
        max(0.0, float(np.dot(anchor, embedder.embed(frame, face))))
        for frame, face in zip(frames, faces)
        if face is not None
    ]
    skipped = len(frames) - len(scores)
    return IdentityScore(float(np.mean(scores)) if scores else math.nan, len(scores), skipped)


class AnalyzerEmbedder:
    """A FaceAnalyzer's own embedding (dlib 128-d, insightface ArcFace 512-d) as a FaceEmbedder."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        return np.asarray(self.analyzer.embed(np.ascontiguousarray(image), face), dtype=np.float32)


class AlignedCropEmbedder:
    """A torch face recogniser on the ArcFace-aligned RGB crop scaled to [-1, 1] (CurricularFace's input).

    ``model`` maps ``[N, 3, size, size]`` to ``[N, D]``; the output is L2-normalised here.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], size: int = 112, device: str = "cpu"):
        self.model, self.size, self.device = model, size, device

    @torch.no_grad()
    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        crop = arcface_crop(image, face, self.size)
        tensor = torch.from_numpy(crop).permute(2, 0, 1).float().div(127.5).sub(1.0)[None].to(self.device)
        embedding = self.model(tensor)[0].float().cpu()
        return (embedding / embedding.norm().clamp_min(1e-12)).numpy()
