"""Per-frame annotations of the kept face track, the training clip, the reference frame and the cross-face pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from idvid.faces import Face, align_face, box_ellipse_mask, landmark_hull_mask
from idvid.faces.parsing import FACE_AND_HAIR_CLASSES, FaceParser
from idvid.faces.reference import ALIGN_SIZE, align_reference
from idvid.preprocess.filters import rotation_deg
from idvid.preprocess.tracking import FaceAnalysis

SHARPNESS_SIZE = 112  # faces are compared for sharpness at one size, so big faces do not win by pixel count


@dataclass(frozen=True)
class ClipSettings:
    """The training clip: num_frames frames taken every frame_stride frames (ConsisID: 49 at stride 3)."""

    num_frames: int = 49
    frame_stride: int = 3

    @property
    def span(self) -> int:
        """Frames of video the clip covers."""
        return (self.num_frames - 1) * self.frame_stride + 1


@dataclass(frozen=True)
class MaskSettings:
    """How face masks are made: facexlib's BiSeNet parser when `parser_weights` (its parsing_bisenet.pth)
    is given, keeping the CelebAMask-HQ class ids `face_classes`, run on `device`; else the landmark
    hull (68 landmarks) or the box ellipse."""

    parser_weights: Path | None = None
    face_classes: tuple[int, ...] = FACE_AND_HAIR_CLASSES
    device: str = "cpu"


def build_parser(mask: MaskSettings) -> FaceParser | None:
    """The face parser the settings ask for (None: the landmark fallback); a missing file raises here."""
    if mask.parser_weights is None:
        return None
    return FaceParser(mask.parser_weights, device=mask.device, face_classes=mask.face_classes)


def track_frames(analysis: FaceAnalysis, track: int, first: int, last: int, max_gap: int) -> dict[str, np.ndarray]:
    """The track's face on every frame first..last: detected, linearly interpolated between
    detections at most `max_gap` frames apart (detection ran on sampled frames only), else invalid.

    Returns boxes [T, 4], kps [T, 5, 2], landmarks [T, L, 2] (NaN where invalid), embeddings [T, D]
    (from the nearest detection), valid and detected [T] bool.
    """
    mine = np.flatnonzero(analysis.track == track)
    mine = mine[np.argsort(analysis.frame[mine])]
    det_frames = analysis.frame[mine]
    num = last - first + 1
    out = {
        "boxes": np.full((num, 4), np.nan, np.float32),
        "kps": np.full((num, 5, 2), np.nan, np.float32),
        "landmarks": np.full((num, *analysis.landmarks.shape[1:]), np.nan, np.float32),
        "embeddings": np.zeros((num, analysis.embedding_dim), np.float32),
        "valid": np.zeros(num, bool),
        "detected": np.zeros(num, bool),
    }
    sources = {"boxes": analysis.box, "kps": analysis.kps, "landmarks": analysis.landmarks}
    for i, t in enumerate(range(first, last + 1)):
        after = int(np.searchsorted(det_frames, t))
        if after < len(det_frames) and det_frames[after] == t:
            picks, weights = [mine[after]], [1.0]
            out["detected"][i] = True
        elif 0 < after < len(det_frames) and det_frames[after] - det_frames[after - 1] <= max_gap:
            a, b = det_frames[after - 1], det_frames[after]
            weight_b = (t - a) / (b - a)
            picks, weights = [mine[after - 1], mine[after]], [1.0 - weight_b, weight_b]
        else:
            continue
        for key, source in sources.items():
            out[key][i] = sum(w * source[p] for p, w in zip(picks, weights))
        out["embeddings"][i] = analysis.embedding[picks[int(np.argmax(weights))]]
        out["valid"][i] = True
    return out


def face_mask(shape_hw: tuple[int, int], box: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, str]:
    """({0,1} mask, how it was made) without a parser: the 68-landmark hull, else the box's inscribed ellipse."""
    if landmarks.shape == (68, 2) and np.isfinite(landmarks).all():
        return landmark_hull_mask(shape_hw, landmarks), "landmark_hull"
    return box_ellipse_mask(shape_hw, box), "box_ellipse"


def sharpness(frame: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face crop (resized to SHARPNESS_SIZE): higher is sharper."""
    height, width = frame.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    gray = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def choose_clip(valid: np.ndarray, clip: ClipSettings) -> np.ndarray:
    """Frame indices of the training clip: the window with the most face frames (earliest on ties)."""
    starts = range(len(valid) - clip.span + 1)
    best = max(starts, key=lambda s: (int(valid[s : s + clip.span : clip.frame_stride].sum()), -s))
    return best + np.arange(clip.num_frames) * clip.frame_stride


def annotate_clip(
    frames: np.ndarray,
    faces: dict[str, np.ndarray],
    clip: ClipSettings,
    align_size: int,
    parser: FaceParser | None = None,
) -> dict[str, np.ndarray]:
    """The clip's .npz arrays (see idvid.data.manifest) from its frames and its track's faces;
    masks from `parser` when given, else from face_mask."""
    num, height, width, _ = frames.shape
    valid = faces["valid"]
    masks = np.zeros((num, height, width), np.uint8)
    sources = set()
    sharp = np.full(num, np.nan, np.float32)
    rotation = np.full(num, np.nan, np.float32)
    for t in np.flatnonzero(valid):
        if parser is not None:
            face = Face(box=tuple(map(float, faces["boxes"][t])), score=1.0, kps=faces["kps"][t])
            masks[t], source = parser.parse_mask(frames[t], face), "bisenet"
        else:
            masks[t], source = face_mask((height, width), faces["boxes"][t], faces["landmarks"][t])
        sources.add(source)
        sharp[t] = sharpness(frames[t], faces["boxes"][t])
        rotation[t] = rotation_deg(faces["kps"][t])
    clip_frames = choose_clip(valid, clip)
    candidates = clip_frames[valid[clip_frames]]
    if len(candidates) == 0:  # the filters keep only tracks with faces; a window without one is a bug
        raise ValueError("no face frame inside the chosen training clip")
    sizes = np.sqrt(np.prod(faces["boxes"][:, 2:] - faces["boxes"][:, :2], axis=1))
    # Sharp, frontal and large, each relative to the best of the clip so no one term dominates by scale.
    score = (
        sharp[candidates]
        / max(np.nanmax(sharp[candidates]), 1e-6)
        * np.cos(np.radians(np.minimum(rotation[candidates], 90.0)))
        * sizes[candidates]
        / max(np.nanmax(sizes[candidates]), 1e-6)
    )
    reference = int(candidates[int(np.argmax(score))])
    in_clip = np.zeros(num, bool)
    in_clip[clip_frames[0] : clip_frames[-1] + 1] = True
    crop, _ = align_face(frames[reference], faces["kps"][reference], align_size)
    return {
        "boxes": faces["boxes"],
        "kps": faces["kps"],
        "landmarks": faces["landmarks"],
        "valid": valid,
        "masks": masks,
        "embeddings": faces["embeddings"],
        "embedding_dim": np.array(faces["embeddings"].shape[1], dtype=np.int64),
        "mask_source": np.array("+".join(sorted(sources))),
        "detected": faces["detected"],
        "rotation_deg": rotation,
        "sharpness": sharp,
        "clip_frames": clip_frames.astype(np.int64),
        "reference_frame": np.array(reference, dtype=np.int64),
        "cross_face_frames": np.flatnonzero(valid & ~in_clip).astype(np.int64),
        "reference_crop": crop,
    }


def reference_arrays(
    frames: np.ndarray, kps: np.ndarray, masks: np.ndarray, valid: np.ndarray
) -> dict[str, np.ndarray]:
    """The aligned reference face of every face frame, so training does not align at every step.

    ``frames`` must be the frames as the dataset decodes them from the clip's video (for a
    re-encoded clip: read back from the written mp4), so the reference pixels are exactly those
    ``idvid.faces.reference_images`` makes from the same frame. Returns
    ``reference_faces`` [T, 512, 512, 3] uint8 (0 where no face) and ``reference_matrices``
    [T, 2, 3] float64 (frame -> crop pixels; NaN where no face).
    """
    num = len(frames)
    faces = np.zeros((num, ALIGN_SIZE, ALIGN_SIZE, 3), np.uint8)
    matrices = np.full((num, 2, 3), np.nan, np.float64)
    for t in np.flatnonzero(valid):
        faces[t], matrices[t] = align_reference(frames[t], kps[t], masks[t])
    return {"reference_faces": faces, "reference_matrices": matrices}
