"""Short clips rendered from real photos in installed packages (the demo's camera moves), and helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from idvid.data.video_io import write_mp4
from idvid.demo import Camera, render_frames, source_photos
from idvid.faces import DlibFaceAnalyzer
from idvid.preprocess import ClipSettings, FilterSettings, PreprocessSettings

NUM_FRAMES = 8  # short clips keep the detector's time (the bulk of these tests) low
# A slow pan to the right and a zoom: the face moves and changes size, so boxes can be checked per frame.
PAN = Camera(fill=(0.45, 0.45), pan_x=(-0.08, 0.08), pan_y=(0.0, 0.0), roll_deg=(0.0, 0.0), caption="a person.")
ZOOM = Camera(fill=(0.38, 0.5), pan_x=(0.0, 0.0), pan_y=(0.0, 0.0), roll_deg=(0.0, 0.0), caption="a face.")


class CountingAnalyzer:
    """The dlib analyzer, counting its calls: how tests see that a cache was (not) used."""

    def __init__(self):
        self.inner = DlibFaceAnalyzer()
        self.embedding_dim = self.inner.embedding_dim
        self.detect_calls = 0
        self.embed_calls = 0

    def detect(self, image):
        self.detect_calls += 1
        return self.inner.detect(image)

    def embed(self, image, face):
        self.embed_calls += 1
        return self.inner.embed(image, face)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return source_photos()


@pytest.fixture(scope="session")
def photo_faces(photos):
    analyzer = DlibFaceAnalyzer()
    return {name: analyzer.detect(photo) for name, photo in photos.items()}


def render(photo, box, camera, num_frames=NUM_FRAMES) -> np.ndarray:
    """The demo's 16-frame camera move, first `num_frames` frames (the move is then only partly done)."""
    frames = render_frames(photo, box, camera)
    return frames[np.linspace(0, len(frames) - 1, num_frames).round().astype(int)]


def group_frames(photo: np.ndarray, num_frames: int = 6) -> np.ndarray:
    """A slow pan over the whole multi-person photo at half size: every face in view, ~55 px wide."""
    small = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
    height, width = small.shape[0] // 2 * 2, small.shape[1] // 2 * 2 - 32
    return np.stack([small[:height, s : s + width] for s in np.linspace(0, 30, num_frames).round().astype(int)])


def pair_frames(photo: np.ndarray, num_frames: int = 4) -> np.ndarray:
    """Two people of t1.jpg side by side, faces of about the same size, camera still."""
    small = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return np.repeat(small[None, 110:290, 330:650], num_frames, axis=0)


@pytest.fixture(scope="session")
def clip_library(tmp_path_factory, photos, photo_faces) -> Path:
    """Rendered mp4 files: astronaut (pan), t1 person 1 (zoom), t1 person 2 (pan), the whole t1 group,
    two t1 people side by side, and a faceless patch of the astronaut photo."""
    root = tmp_path_factory.mktemp("clips")
    clips = {
        "astronaut": render(photos["astronaut"], photo_faces["astronaut"][0].box, PAN),
        "t1-1": render(photos["t1"], photo_faces["t1"][1].box, ZOOM),
        "t1-2": render(photos["t1"], photo_faces["t1"][2].box, PAN),
        "group": group_frames(photos["t1"]),
        "pair": pair_frames(photos["t1"]),
        "wall": render(photos["astronaut"], (420, 300, 500, 380), PAN),  # a patch of the photo with no face
    }
    for name, frames in clips.items():
        write_mp4(root / f"{name}.mp4", frames)
    return root


def make_raw(library: Path, folder: Path, names: list[str], captions: bool = True) -> Path:
    """A raw folder with copies of library clips, each with a sidecar caption."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(library / f"{name}.mp4", folder / f"{name}.mp4")
        if captions:
            (folder / f"{name}.txt").write_text(f"a video of {name}.\n")
    return folder


def settings_for(raw: Path, out: Path, **overrides) -> PreprocessSettings:
    """Thresholds for the small rendered clips (faces ~110 px, 8 frames, some heads turned ~40 degrees)."""
    filters = FilterSettings(min_face_size=64, min_valid_fraction=0.5, max_rotation_deg=60)
    values = {"raw": raw, "out": out, "filters": filters, "clip": ClipSettings(num_frames=4, frame_stride=1)}
    return PreprocessSettings(**{**values, **overrides})
