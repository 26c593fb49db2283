"""Bundled DEMO data set: short synthetic clips made from photos that ship with installed packages.

Seven identities: the astronaut photo from scikit-image (1 person) and insightface's
`t1.jpg` (6 people). For each face a 16-frame 256x256 clip is rendered by moving a
virtual camera (pan, zoom, small roll) over the still photo, written as mp4, then decoded
and annotated with the same steps a real preprocessor runs (detect, landmarks, mask,
embedding). It exercises the whole pipeline offline; it is not training data.

Each clip also carries a synthetic audio track (``synth_voice``), made deterministically from the clip's
seed: not speech, a vowel-like buzz (harmonics of a per-clip pitch shaped by two formants) whose loudness
rises and falls in syllable-like pulses of 3-5 a second. It lets audio-driven methods train end to end
on the demo; there is no lip motion in the clips that it could be in sync with.

The clips are rendered into a raw folder with sidecar captions and then go through
`idvid.preprocess` exactly as a user's videos do (with thresholds for 256 px synthetic clips),
so the demo is made by the one preprocessing path there is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from idvid.data.audio import SAMPLE_RATE
from idvid.data.video_io import write_mp4
from idvid.faces import DlibFaceAnalyzer, Face

if TYPE_CHECKING:
    from idvid.preprocess import PreprocessSettings

log = logging.getLogger(__name__)

# Bump when the output of the builder changes: the cache directory name includes it.
DEMO_VERSION = "v4"  # v3: annotations hold landmarks and the aligned reference faces; v4: an audio track per clip
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

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(fill, pan_x, pan_y, roll_deg) at time ``t`` in [0, 1] of the move, eased (smoothstep: starts and
        stops gently)."""
        ease = 3 * t**2 - 2 * t**3
        return tuple(_lerp(pair, ease) for pair in (self.fill, self.pan_x, self.pan_y, self.roll_deg))

    def scaled(self, amount: float) -> "Camera":
        """The same move, each start/end pair pulled toward its middle by ``amount`` (1: unchanged, 0: still)."""

        def scale(pair: tuple[float, float]) -> tuple[float, float]:
            middle = (pair[0] + pair[1]) / 2
            return (middle + (pair[0] - middle) * amount, middle + (pair[1] - middle) * amount)

        return replace(
            self, fill=scale(self.fill), pan_x=scale(self.pan_x), pan_y=scale(self.pan_y), roll_deg=scale(self.roll_deg)
        )


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
    return build_cached(root / DEMO_VERSION, _build_into, "demo") / "manifest.jsonl"


def build_cached(final: Path, build_into, what: str) -> Path:
    """Run `build_into(folder)` once into `final` (atomically: a temp folder renamed into place); return `final`.

    `final` counts as built when it holds a manifest.jsonl; an interrupted build is never picked up.
    """
    manifest = final / "manifest.jsonl"
    if manifest.is_file():
        return final
    if final.exists():
        raise RuntimeError(
            f"{final} exists but holds no manifest.jsonl (not made by the {what} builder?); delete it and call again"
        )
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    log.info(
        "building the %s data set (synthetic clips from photos bundled with scikit-image and insightface) in %s",
        what,
        final,
    )
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-building-", dir=root))
    try:
        build_into(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache should not be
        try:
            os.replace(tmp, final)
        except OSError:
            if not manifest.is_file():  # not a concurrent builder that finished first
                raise
            log.info("another process finished the %s build first; using %s", what, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s data set ready in %.1f s: %s", what, time.perf_counter() - start, final)
    return final


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


def demo_settings(raw: Path, out: Path) -> PreprocessSettings:
    """The preprocessing settings of the demo: the defaults, scaled for 16-frame 256x256 clips.

    Faces are ~110 px wide (default minimum 128); some of t1.jpg's people turn their heads
    ~40 degrees, which the default 30 degree limit would drop; half the frames with a face
    suffice; and the training clip is data/demo.yaml's 9 frames at stride 1.
    """
    from idvid.preprocess import ClipSettings, FilterSettings, PreprocessSettings

    filters = FilterSettings(min_face_size=64, min_valid_fraction=MIN_VALID_FRAMES / NUM_FRAMES, max_rotation_deg=60)
    return PreprocessSettings(raw=raw, out=out, filters=filters, clip=ClipSettings(num_frames=9, frame_stride=1))


def _build_into(out_dir: Path) -> None:
    from idvid.preprocess import Preprocessor

    raw = out_dir / "raw"
    raw.mkdir()
    analyzer = DlibFaceAnalyzer()
    for source_index, (name, photo) in enumerate(source_photos().items()):
        faces = analyzer.detect(photo)
        log.info("demo: %d face(s) in source photo %r", len(faces), name)
        for face_index, face in enumerate(faces):
            render_clip(photo, face, f"{name}-{face_index}", (DEMO_SEED, source_index, face_index), raw)
    summary = Preprocessor(demo_settings(raw, out_dir), analyzer).run()
    shutil.rmtree(raw)  # the rendered originals: the pipeline's videos/ hold what training reads
    if not summary["manifest"]:
        raise RuntimeError(f"demo build produced no usable clip ({summary['outcomes']}); check the face detector")


def render_clip(
    photo: np.ndarray,
    face: Face,
    clip_id: str,
    seed: tuple[int, ...],
    raw: Path,
    size: int = FRAME_SIZE,
    num_frames: int = NUM_FRAMES,
) -> Path:
    """Render one camera move over `face` as `<raw>/<clip_id>.mp4` with its caption in `<clip_id>.txt`."""
    camera = random_camera(np.random.default_rng(seed))
    return write_clip(raw, clip_id, render_frames(photo, face.box, camera, size, num_frames), camera, seed)


def write_clip(raw: Path, clip_id: str, frames: np.ndarray, camera: Camera, seed: tuple[int, ...]) -> Path:
    """`<raw>/<clip_id>.mp4` with the clip's synthetic voice (drawn from `seed`), and its caption in `.txt`."""
    voice = synth_voice(np.random.default_rng((*seed, 1)), len(frames) / FPS)
    video = raw / f"{clip_id}.mp4"
    write_mp4(video, frames, fps=FPS, audio=voice, audio_rate=SAMPLE_RATE)
    video.with_suffix(".txt").write_text(camera.caption + "\n")
    return video


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


def render_frames(
    photo: np.ndarray,
    box: tuple[float, float, float, float],
    camera: Camera,
    size: int = FRAME_SIZE,
    num_frames: int = NUM_FRAMES,
) -> np.ndarray:
    """[num_frames, size, size, 3] uint8 views of `photo` along the camera move."""
    x0, y0, x1, y1 = box
    face_width = x1 - x0
    # The HOG box spans brows to chin; aim a little higher so the hair stays in frame.
    centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0 - 0.1 * face_width)
    frames = []
    for t in np.linspace(0.0, 1.0, num_frames):
        fill, pan_x, pan_y, roll_deg = camera.at(t)
        scale = fill * size / face_width
        matrix = cv2.getRotationMatrix2D(centre, roll_deg, scale)
        target = (size / 2 + pan_x * size, size / 2 + pan_y * size)
        matrix[:, 2] += np.array(target) - np.array(centre)
        frames.append(
            cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        )
    return np.stack(frames)


def synth_voice(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A vowel-like mono waveform at 16 kHz, float32 in [-0.5, 0.5]: not speech (see the module docstring).

    Harmonics of a pitch of 100-220 Hz weighted by two resonances (formants, as in a vowel) and a loudness
    that pulses like syllables (a raised sine of 3-5 Hz to a power, so it falls silent between pulses).
    """
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    pitch = rng.uniform(100.0, 220.0)
    formants = (rng.uniform(500.0, 900.0), rng.uniform(1100.0, 2200.0))
    wave = np.zeros_like(t)
    for harmonic in range(1, int(3500 // pitch) + 1):
        frequency = harmonic * pitch
        gain = sum(np.exp(-(((frequency - f) / 150.0) ** 2)) for f in formants) + 0.05
        wave += gain / harmonic * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 2 * np.pi))
    wave *= syllables**2
    return (0.5 * wave / max(np.abs(wave).max(), 1e-6)).astype(np.float32)
