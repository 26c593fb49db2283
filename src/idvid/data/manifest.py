"""Clip manifest: JSON Lines, one training clip per line.

Each line is an object with these keys (paths are relative to the manifest's directory)::

    {"id": "t1-3", "video": "videos/t1-3.mp4", "caption": "a person looking at the camera, the camera slowly zooms in.", "annotations": "annotations/t1-3.npz", "identity": "t1-3"}

- id: unique clip name.
- video: the clip as mp4 (any size; frames are read as RGB).
- caption: the text prompt.
- annotations: a .npz whose arrays are indexed by frame t of the mp4 (T frames):
    boxes       [T, 4] float32  face box x0, y0, x1, y1 in pixels (NaN rows where no face)
    kps         [T, 5, 2] float32  ArcFace-order keypoints (NaN where no face)
    landmarks   [T, L, 2] float32  68 iBUG landmarks (L = 68), or L = 0 when the face backend gives
                                   none (insightface); NaN rows where no face (or no landmarks)
    valid       [T] bool        frame has a detected face
    masks       [T, H, W] uint8 face mask {0,1} at video resolution
    embeddings  [T, D] float32  L2-normalised identity embedding (zeros where not valid)
    embedding_dim  scalar int  D (dlib 128, insightface 512)
    mask_source    string      how masks were made: "landmark_hull" (68 landmarks) or "box_ellipse"
    reference_faces     [T, 512, 512, 3] uint8  each face frame's reference face, made once here
                        instead of at every training step: aligned by its 5 keypoints, background
                        whitened by its mask (idvid.faces.reference.align_reference, from the frames decoded
                        from `video`); zeros where no face. The bulk of the file with the masks
                        (0.79 MB a frame before compression).
    reference_matrices  [T, 2, 3] float64  each face frame's alignment, frame -> reference_faces
                        pixels (NaN where no face); the dataset maps keypoints, landmarks and box with it
  `python -m idvid preprocess` also writes (optional: training reads only the keys above):
    detected           [T] bool      the detector ran on this frame and found the face (else interpolated)
    rotation_deg       [T] float32   head rotation from the keypoints (NaN where no face)
    sharpness          [T] float32   variance of the Laplacian of the face crop (NaN where no face)
    clip_frames        [N] int64     the training clip chosen by preprocess: N frames at stride s
    reference_frame    scalar int64  the sharpest, most frontal, largest face frame inside the clip
    cross_face_frames  [K] int64     face frames of the same person outside the clip
    reference_crop     [S, S, 3] uint8  the reference face aligned by 5-point similarity (S = 512)
    source_frames      [2] int64     first and last frame of this clip in the raw video
    eye_boxes          [T, 4] float32  both eyes' box x0, y0, x1, y1 from the 68 landmarks (NaN without them)
    mouth_boxes        [T, 4] float32  the mouth's box from the 68 landmarks (NaN without them)
    has_audio          scalar bool   the raw video had an audio track (then muxed into `video` as AAC)
    audio_mel          [M, T_mel] float32  Whisper's log-mel of the clip's audio (idvid.data.audio, 100 frames a
                       second from the clip's first frame; M x 0 without audio)
    frame_times        [T] float32   seconds of each frame from the clip's first frame
  The dataset reads the audio arrays when present (clips without them have no audio).
- identity: the person; clips that share it show the same person.

A whole example: `python -m idvid preprocess data.raw=raw/ data.out=ds/` on `raw/talk.mp4` with
`raw/talk.txt` writes `ds/videos/talk.mp4`, `ds/annotations/talk.npz` and this `ds/manifest.jsonl` line::

    {"id": "talk", "video": "videos/talk.mp4", "caption": "a woman talks to the camera.", "annotations": "annotations/talk.npz", "identity": "talk"}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("id", "video", "caption", "annotations", "identity")
ANNOTATION_KEYS = (
    "boxes",
    "kps",
    "landmarks",
    "valid",
    "masks",
    "embeddings",
    "embedding_dim",
    "mask_source",
    "reference_faces",
    "reference_matrices",
)
IMAGE_KEYS = ("masks", "reference_faces")  # per-frame images: the bulk of an annotations file


def read_manifest(path: str | Path) -> list[dict]:
    """Load and check a manifest; returns entries with `video`/`annotations` made absolute.

    Raises ValueError naming the line number for a malformed line, a missing key, a missing
    file or a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest not found: {path}; pass the path of a .jsonl manifest (or None for the demo)"
        )
    root = path.parent
    entries: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, entry in read_json_lines(path):
        for key in REQUIRED_KEYS:
            if key not in entry:
                raise ValueError(f"{path}:{lineno}: missing key {key!r}; every line needs {list(REQUIRED_KEYS)}")
        for key in ("video", "annotations"):
            file = root / entry[key]
            if not file.is_file():
                raise ValueError(f"{path}:{lineno}: {key} file not found: {file} (paths are relative to the manifest)")
            entry[key] = str(file)
        if entry["id"] in seen:
            first = seen[entry["id"]]
            raise ValueError(f"{path}:{lineno}: id {entry['id']!r} already used on line {first}; ids must be unique")
        seen[entry["id"]] = lineno
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: manifest has no clips")
    return entries


def read_json_lines(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a JSON Lines file; a bad line is named in the error."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err}); each line must be one JSON object") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def write_manifest(path: str | Path, entries: list[dict]) -> None:
    """Write entries (with paths already relative to the manifest's directory) as JSON Lines."""
    lines = [json.dumps({key: entry[key] for key in REQUIRED_KEYS}) for entry in entries]
    Path(path).write_text("\n".join(lines) + "\n")


def load_annotations(path: str | Path, *, with_images: bool = True) -> dict[str, np.ndarray]:
    """Read a clip's .npz; the per-frame images (IMAGE_KEYS) are skipped unless needed: they are its bulk."""
    with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in ANNOTATION_KEYS if key not in npz.files]
        if missing:
            raise ValueError(
                f"annotations {path} lack arrays {missing} (expected {list(ANNOTATION_KEYS)}): made by an older "
                "idvid or another tool; run the `python -m idvid preprocess` command that made them again (same "
                "data.out): it redoes only the outputs of an older format"
            )
        keys = [key for key in npz.files if with_images or key not in IMAGE_KEYS]
        return {key: npz[key] for key in keys}


def manifest_embedding_dim(path: str | Path) -> int:
    """The identity embedding width D of a manifest's clips (from its first clip's annotations).

    Every clip of a manifest comes from one face backend (dlib 128, insightface 512), so the first
    tells; models whose inputs include the embedding read their width from here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest not found: {path}; pass data.manifest=<a .jsonl manifest> or null for the demo"
        )
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                annotations = path.parent / json.loads(line)["annotations"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: cannot read the clip's annotations path ({err})") from err
            if not annotations.is_file():
                raise ValueError(
                    f"{path}:{lineno}: annotations file not found: {annotations} (paths are relative to the "
                    f"manifest); re-run `python -m idvid preprocess` or fix the line"
                )
            with np.load(annotations, allow_pickle=False) as npz:
                if "embedding_dim" not in npz:
                    raise ValueError(
                        f"{path}:{lineno}: {annotations} has no `embedding_dim` (arrays: {sorted(npz.files)}); "
                        f"it was not written by `python -m idvid preprocess`, re-run it on the videos"
                    )
                return int(npz["embedding_dim"])
    raise ValueError(f"{path}: manifest has no clips")
