"""Face detection on sampled frames and identity tracking by box overlap plus embedding similarity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idvid.data.video_io import iter_frames, probe_video
from idvid.faces import FaceAnalyzer


@dataclass(frozen=True)
class TrackingSettings:
    """How detections are linked into identities.

    Two detections in nearby sampled frames are the same person when their identity embeddings
    have cosine similarity >= same_person_similarity, or when their boxes overlap (IoU >= min_iou)
    and the similarity is still >= overlap_similarity (a blurred or turned face embeds less
    reliably, the overlap vouches for it). A track that misses more than max_gap sampled frames
    ends; the same person later starts a new track. The similarity scale depends on the face
    backend, so the two similarity thresholds come from its config.
    """

    min_iou: float = 0.3
    same_person_similarity: float = 0.93
    overlap_similarity: float = 0.85
    max_gap: int = 5


@dataclass
class FaceAnalysis:
    """Every face found on the sampled frames of one video, each assigned to a track.

    Arrays over the K detections: frame [K] (video frame index), track [K], box [K, 4],
    score [K], kps [K, 5, 2], landmarks [K, L, 2] (L = 0 when the backend gives none),
    embedding [K, D]. sampled [S]: the frames the detector ran on.
    """

    num_frames: int
    height: int
    width: int
    fps: float
    embedding_dim: int
    sampled: np.ndarray
    frame: np.ndarray
    track: np.ndarray
    box: np.ndarray
    score: np.ndarray
    kps: np.ndarray
    landmarks: np.ndarray
    embedding: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FaceAnalysis":
        scalars = {"num_frames": int, "height": int, "width": int, "fps": float, "embedding_dim": int}
        values = {name: cast(arrays[name]) for name, cast in scalars.items()}
        arrays_only = {name: arrays[name] for name in cls.__dataclass_fields__ if name not in scalars}
        return cls(**values, **arrays_only)

    def track_ids(self) -> list[int]:
        return sorted(int(t) for t in np.unique(self.track))


def analyze_video(path: str | Path, analyzer: FaceAnalyzer, every: int, tracking: TrackingSettings) -> FaceAnalysis:
    """Decode `path` once, detect and embed faces on every `every`-th frame, then link them into tracks.

    Raises video_io.VideoReadError for a file that is not a readable video and PermissionError
    for one that cannot be opened.
    """
    if every < 1:
        raise ValueError(f"detect.every must be >= 1, got {every}")
    info = probe_video(path)
    dim = int(analyzer.embedding_dim)
    sampled, rows = [], []
    num_frames, height, width = 0, info.height, info.width
    for t, frame in enumerate(iter_frames(path)):
        num_frames = t + 1
        height, width = frame.shape[:2]
        if t % every:
            continue
        sampled.append(t)
        for face in analyzer.detect(frame):
            rows.append((t, face, analyzer.embed(frame, face)))
    num_landmarks = max((len(f.landmarks) for _, f, _ in rows if f.landmarks is not None), default=0)
    landmarks = np.full((len(rows), num_landmarks, 2), np.nan, dtype=np.float32)
    for i, (_, face, _) in enumerate(rows):
        if face.landmarks is not None and len(face.landmarks) == num_landmarks:
            landmarks[i] = face.landmarks
    frame_ids = np.array([t for t, _, _ in rows], dtype=np.int64)
    boxes = np.array([f.box for _, f, _ in rows], dtype=np.float32).reshape(-1, 4)
    embeddings = np.array([e for _, _, e in rows], dtype=np.float32).reshape(-1, dim)
    return FaceAnalysis(
        num_frames=num_frames,
        height=height,
        width=width,
        fps=info.fps,
        embedding_dim=dim,
        sampled=np.array(sampled, dtype=np.int64),
        frame=frame_ids,
        track=assign_tracks(frame_ids, boxes, embeddings, tracking, every),
        box=boxes,
        score=np.array([f.score for _, f, _ in rows], dtype=np.float32),
        kps=np.array([f.kps for _, f, _ in rows], dtype=np.float32).reshape(-1, 5, 2),
        landmarks=landmarks,
        embedding=embeddings,
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def assign_tracks(
    frames: np.ndarray, boxes: np.ndarray, embeddings: np.ndarray, settings: TrackingSettings, every: int = 1
) -> np.ndarray:
    """Track id [K] for each detection, greedy frame by frame: best (similarity + IoU) pairs first.

    A track is compared through its last box (where it is now) and the mean of its embeddings
    (who it is, steadier than any single frame). One detection joins at most one track per frame.
    """
    track_of = np.full(len(frames), -1, dtype=np.int64)
    last_box: list[np.ndarray] = []
    last_frame: list[int] = []
    embedding_sum: list[np.ndarray] = []
    for t in np.unique(frames):
        dets = np.flatnonzero(frames == t)
        active = [k for k in range(len(last_box)) if t - last_frame[k] <= settings.max_gap * every]
        pairs = []
        for k in active:
            mean = embedding_sum[k] / max(float(np.linalg.norm(embedding_sum[k])), 1e-12)
            for d in dets:
                similarity = float(mean @ embeddings[d])
                iou = box_iou(last_box[k], boxes[d])
                overlaps = iou >= settings.min_iou and similarity >= settings.overlap_similarity
                if overlaps or similarity >= settings.same_person_similarity:
                    pairs.append((similarity + iou, k, d))
        used_tracks, used_dets = set(), set()
        for _, k, d in sorted(pairs, reverse=True):
            if k in used_tracks or d in used_dets:
                continue
            used_tracks.add(k)
            used_dets.add(d)
            track_of[d] = k
        for d in dets:
            if track_of[d] < 0:
                track_of[d] = len(last_box)
                last_box.append(boxes[d])
                last_frame.append(int(t))
                embedding_sum.append(np.zeros_like(embeddings[d]))
            k = track_of[d]
            last_box[k], last_frame[k] = boxes[d], int(t)
            embedding_sum[k] = embedding_sum[k] + embeddings[d]
    return track_of
