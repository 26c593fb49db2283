"""Bundled DEMO data set: short synthetic clips made from photos that ship with installed packages.

Seven identities: the astronaut photo from scikit-image (1 person) and insightface's
`t1.jpg` (6 people). For each face a 16-frame 256x256 clip is rendered by moving a
virtual camera (pan, zoom, small roll) over the still photo, written as mp4, then decoded
and annotated with the same steps a real preprocessor runs (detect, landmarks, mask,
embedding). It exercises the whole pipeline offline; it is not training data.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from idvid.data.manifest import write_manifest
from idvid.data.video_io import read_mp4, write_mp4
from idvid.faces import DlibFaceAnalyzer, Face, FaceAnalyzer, landmark_hull_mask

log = logging.getLogger(__name__)

# Bump when the output of the builder changes: the cache directory name includes it.
DEMO_VERSION = "v1"
DEMO_SEED = 1234
NUM_FRAMES = 16
FRAME_SIZE = 256
FPS = 8
MIN_VALID_FRAMES = 8

# (camera motion as written in the caption, kind of motion that produces it)
MOTIONS = (
    ("pans to the left", "pan_left"),
    ("pans to the right", "pan_right"),
    ("zooms in", "zoom_in"),
    ("zooms out", "zoom_out"),
    ("rotates a little", "roll"),
)
CAPTION_TEMPLATES = (
    "a person looking at the camera, the camera slowly {motion}.",
    "a close up video of a face, the camera gently {motion}.",
    "a portrait video of a person, the camera slowly {motion}.",
    "a person faces the viewer while the camera slowly {motion}.",
    "head and shoulders shot of a person, the camera smoothly {motion}.",
    "a person stays still in front of the camera, the camera slowly {motion}.",
)


@dataclass
class Camera:
    """Start/end camera state; the face fills `fill` of the frame width, offset by `pan` (fraction of frame)."""

    fill: tuple[float, float]
    pan_x: tuple[float, float]
    pan_y: tuple[float, float]
    roll_deg: tuple[float, float]
    caption: str


def default_cache_root() -> Path:
    """`$IDVID_CACHE/demo`, else `~/.cache/idvid/demo`."""
    base = os.environ.get("IDVID_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "idvid") / "demo"


def build_demo(cache_dir: Path | str | None = None) -> Path:
    """Build the demo data set once and return its manifest path.

    cache_dir: root folder (default `default_cache_root()`); the data lives in
    `<cache_dir>/<DEMO_VERSION>/` and is built in a temp folder that is renamed into place
    only when complete, so an interrupted build is never picked up.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / DEMO_VERSION
    manifest = final / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    if final.exists():
        raise RuntimeError(
            f"{final} exists but holds no manifest.jsonl (not made by build_demo?); delete it and call again"
        )
    root.mkdir(parents=True, exist_ok=True)
    log.info(
        "building the DEMO data set (synthetic clips from photos bundled with scikit-image and insightface) in %s",
        final,
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-building-", dir=root))
    try:
        _build_into(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache should not be
        try:
            os.replace(tmp, final)
        except OSError:
            if not manifest.is_file():  # not a concurrent builder that finished first
                raise
            log.info("another process finished the demo build first; using %s", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo data set ready in %.1f s: %s", time.perf_counter() - start, manifest)
    return manifest


def source_photos() -> dict[str, np.ndarray]:
    """The bundled photos as RGB uint8: {"astronaut": ..., "t1": ...}."""
    import skimage.data

    spec = importlib.util.find_spec("insightface")  # locate only: importing it is slow
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo needs insightface's sample photo data/images/t1.jpg; install it with `pip install insightface`"
        )
    t1_path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "t1.jpg"
    t1 = cv2.imread(str(t1_path))
    if t1 is None:
        raise FileNotFoundError(f"demo source photo not found or unreadable: {t1_path}; reinstall insightface")
    astronaut = np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    return {"astronaut": astronaut, "t1": cv2.cvtColor(t1, cv2.COLOR_BGR2RGB)}


def _build_into(out_dir: Path) -> None:
    (out_dir / "videos").mkdir()
    (out_dir / "annotations").mkdir()
    analyzer = DlibFaceAnalyzer()
    entries = []
    for source_index, (name, photo) in enumerate(source_photos().items()):
        faces = analyzer.detect(photo)
        log.info("demo: %d face(s) in source photo %r", len(faces), name)
        for face_index, face in enumerate(faces):
            clip_id = f"{name}-{face_index}"
            entry = build_clip(photo, face, clip_id, (DEMO_SEED, source_index, face_index), out_dir, analyzer)
            if entry is not None:
                entries.append(entry)
    if not entries:
        raise RuntimeError("demo build produced no usable clip; check the face detector installation")
    write_manifest(out_dir / "manifest.jsonl", entries)  # written last: its presence marks completion


def build_clip(
    photo: np.ndarray, face: Face, clip_id: str, seed: tuple[int, ...], out_dir: Path, analyzer: FaceAnalyzer
) -> dict | None:
    """Render, encode and annotate one clip; returns its manifest entry or None if too few frames have a face."""
    rng = np.random.default_rng(seed)
    camera = random_camera(rng)
    frames = render_frames(photo, face.box, camera)
    video_rel, ann_rel = f"videos/{clip_id}.mp4", f"annotations/{clip_id}.npz"
    write_mp4(out_dir / video_rel, frames, fps=FPS)
    decoded = read_mp4(out_dir / video_rel)  # annotate what training will actually read
    annotations = annotate_frames(decoded, analyzer)
    num_valid = int(annotations["valid"].sum())
    if num_valid < MIN_VALID_FRAMES:
        log.warning(
            "demo: skipping clip %s: a face was found in %d/%d frames, need %d",
            clip_id,
            num_valid,
            len(decoded),
            MIN_VALID_FRAMES,
        )
        (out_dir / video_rel).unlink()
        return None
    np.savez_compressed(out_dir / ann_rel, **annotations)
    log.info("demo: clip %s: face in %d/%d frames, caption %r", clip_id, num_valid, len(decoded), camera.caption)
    return {"id": clip_id, "video": video_rel, "caption": camera.caption, "annotations": ann_rel, "identity": clip_id}


def random_camera(rng: np.random.Generator) -> Camera:
    """A smooth camera move whose main motion matches the caption; the rest is small jitter."""
    motion_text, kind = MOTIONS[rng.integers(len(MOTIONS))]
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    fill_mid = rng.uniform(0.42, 0.48)
    fill = (fill_mid + rng.uniform(-0.01, 0.01), fill_mid + rng.uniform(-0.01, 0.01))
    pan_x = tuple(rng.uniform(-0.03, 0.03, 2))
    pan_y = tuple(rng.uniform(-0.03, 0.03, 2))
    roll = tuple(rng.uniform(-2.0, 2.0, 2))
    amount = rng.uniform(0.7, 1.0)
    if kind in ("pan_left", "pan_right"):
        # Panning the camera left moves the subject right in the frame.
        sign = 1.0 if kind == "pan_left" else -1.0
        pan_x = (-sign * 0.1 * amount, sign * 0.1 * amount)
    elif kind in ("zoom_in", "zoom_out"):
        lo, hi = 0.37, 0.37 + 0.16 * amount
        fill = (lo, hi) if kind == "zoom_in" else (hi, lo)
    else:
        sign = rng.choice([-1.0, 1.0])
        roll = (-sign * 7.0 * amount, sign * 7.0 * amount)
    return Camera(
        fill=tuple(map(float, fill)),
        pan_x=tuple(map(float, pan_x)),
        pan_y=tuple(map(float, pan_y)),
        roll_deg=tuple(map(float, roll)),
        caption=template.format(motion=motion_text),
    )


def _lerp(pair: tuple[float, float], amount: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * amount


def render_frames(photo: np.ndarray, box: tuple[float, float, float, float], camera: Camera) -> np.ndarray:
    """[NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3] uint8 views of `photo` along the camera move."""
    x0, y0, x1, y1 = box
    face_width = x1 - x0
    # The HOG box spans brows to chin; aim a little higher so the hair stays in frame.
    centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0 - 0.1 * face_width)
    frames = []
    for t in np.linspace(0.0, 1.0, NUM_FRAMES):
        ease = 3 * t**2 - 2 * t**3  # smoothstep: starts and stops gently
        lerp = partial(_lerp, amount=ease)
        scale = lerp(camera.fill) * FRAME_SIZE / face_width
        matrix = cv2.getRotationMatrix2D(centre, lerp(camera.roll_deg), scale)
        target = (FRAME_SIZE / 2 + lerp(camera.pan_x) * FRAME_SIZE, FRAME_SIZE / 2 + lerp(camera.pan_y) * FRAME_SIZE)
        matrix[:, 2] += np.array(target) - np.array(centre)
        size = (FRAME_SIZE, FRAME_SIZE)
        frames.append(cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    return np.stack(frames)


def annotate_frames(frames: np.ndarray, analyzer: FaceAnalyzer) -> dict[str, np.ndarray]:
    """Per-frame face annotations (see idvid.data.manifest); frames without a face stay invalid."""
    num, height, width, _ = frames.shape
    dim = int(analyzer.embedding_dim)
    boxes = np.full((num, 4), np.nan, dtype=np.float32)
    kps = np.full((num, 5, 2), np.nan, dtype=np.float32)
    valid = np.zeros(num, dtype=bool)
    masks = np.zeros((num, height, width), dtype=np.uint8)
    embeddings = np.zeros((num, dim), dtype=np.float32)
    for t, frame in enumerate(frames):
        faces = analyzer.detect(frame)
        if not faces or faces[0].landmarks is None:
            continue
        face = faces[0]  # largest face = the subject of the clip
        boxes[t] = face.box
        kps[t] = face.kps
        masks[t] = landmark_hull_mask((height, width), face.landmarks)
        embeddings[t] = analyzer.embed(frame, face)
        valid[t] = True
    return {
        "boxes": boxes,
        "kps": kps,
        "valid": valid,
        "masks": masks,
        "embeddings": embeddings,
        "embedding_dim": np.array(dim, dtype=np.int64),
        "mask_source": np.array("landmark_hull"),
    }
