"""Short test videos made from real photos (insightface's t1.jpg: six different people)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import inception_v3

from idvid.cli import main
from idvid.data.video_io import write_mp4
from idvid.demo import Camera, render_frames, source_photos
from idvid.faces import DlibFaceAnalyzer

from .models import save_tiny_clip, save_tiny_dino

STILL = Camera(fill=(0.45, 0.45), pan_x=(0.0, 0.0), pan_y=(0.0, 0.0), roll_deg=(0.0, 0.0), caption="")
MOVING = Camera(fill=(0.42, 0.5), pan_x=(-0.05, 0.05), pan_y=(0.0, 0.02), roll_deg=(-3.0, 3.0), caption="")


@pytest.fixture(scope="session")
def analyzer() -> DlibFaceAnalyzer:
    return DlibFaceAnalyzer()


@pytest.fixture(scope="session")
def people(analyzer) -> list[np.ndarray]:
    """Moving-camera clips [16, 256, 256, 3] of two different people of t1.jpg."""
    photo = source_photos()["t1"]
    faces = analyzer.detect(photo)
    return [render_frames(photo, face.box, MOVING) for face in faces[:2]]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="session")
def eval_dirs(tmp_path_factory, people) -> dict[str, Path]:
    """videos/, refs/ and prompts.tsv: ``same`` (person 0 vs its own first frame), ``other`` (person 1 vs
    person 0's frame), ``noref`` (no reference image) and ``noprompt`` (no prompt line)."""
    root = tmp_path_factory.mktemp("eval")
    videos, refs = root / "videos", root / "refs"
    videos.mkdir()
    person0, person1 = people
    for name, clip in (("same", person0), ("other", person1), ("noref", person0), ("noprompt", person1)):
        write_mp4(videos / f"{name}.mp4", clip)
    for name in ("same", "other", "noprompt"):
        write_png(refs / f"{name}.png", person0[0])
    prompts = root / "prompts.tsv"
    prompts.write_text(
        "# name<TAB>prompt\nsame\ta person looking at the camera\nother\ta person looking at the camera\n"
        "noref\ta person smiling\n"
    )
    return {"videos": videos, "refs": refs, "prompts": prompts, "root": root}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Local model paths for evaluate: tiny random CLIP and DINOv2 folders, random-weight inception_v3."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    inception = root / "inception_v3_google-0cc3c7bd.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), inception)
    return {"clip": save_tiny_clip(root / "clip"), "dino": save_tiny_dino(root / "dino"), "inception": inception}


def run_cli(args: list[str]) -> None:
    """``python -m idvid ARGS`` in this process; the root logger's handlers are restored afterwards, because
    Hydra's job logging adds a file handler in the run dir that later tests must not write to."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main(args)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
