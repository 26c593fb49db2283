"""evaluate's portrait-animation metrics (sync, lpips, fvd) on tiny random models through the real loaders."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from idvid.data.video_io import write_mp4
from idvid.demo import synth_voice
from idvid.evaluation.evaluate import evaluate

from ..conftest import REPO
from .conftest import write_png
from .models import save_tiny_alexnet_features, save_tiny_i3d, save_tiny_syncnet

# LPIPS comes from the lpips package (pyproject's dependencies); without it the metric is reported unavailable.
HAS_LPIPS = importlib.util.find_spec("lpips") is not None


@pytest.fixture(scope="module")
def animation_dirs(tmp_path_factory, people):
    """videos/ (``talk`` with a voice track, ``mute`` without), refs/, prompts, and targets/: ``talk``'s target is
    itself, ``mute``'s another person."""
    root = tmp_path_factory.mktemp("animation")
    person0, person1 = people
    voice = synth_voice(np.random.default_rng(0), len(person0) / 8)
    (root / "videos").mkdir()
    write_mp4(root / "videos" / "talk.mp4", person0, fps=8, audio=voice)
    write_mp4(root / "videos" / "mute.mp4", person0, fps=8)
    (root / "targets").mkdir()
    write_mp4(root / "targets" / "talk.mp4", person0, fps=8)
    write_mp4(root / "targets" / "mute.mp4", person1, fps=8)
    for name in ("talk", "mute"):
        write_png(root / "refs" / f"{name}.png", person0[0])
    (root / "prompts.tsv").write_text("talk\ta person talking\nmute\ta person\n")
    return root


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("animation-models")
    return {
        "syncnet": str(save_tiny_syncnet(folder / "syncnet_v2.model")),
        "alexnet": str(save_tiny_alexnet_features(folder / "alexnet-owt-7be5be79.pth")),
        "i3d": str(save_tiny_i3d(folder / "i3d_torchscript.pt")),
    }


def config(root, out, models: dict) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "src" / "idvid" / "conf" / "evaluation" / "default.yaml"))
    missing = str(out.parent / "no-models-here")
    cfg["models"] = {k: v.replace("${.root}", missing) for k, v in cfg["models"].items() if k != "root"}
    cfg["models"].update(models)
    cfg.update(videos=str(root / "videos"), refs=str(root / "refs"), prompts=str(root / "prompts.tsv"))
    metrics = ["sync", "fvd"] + (["lpips"] if HAS_LPIPS else [])
    cfg.update(targets=str(root / "targets"), out=str(out), device="cpu", num_frames=4, metrics=metrics)
    return cfg


def test_sync_lpips_and_fvd_run_on_tiny_models(animation_dirs, tiny_files, tmp_path):
    result = evaluate(config(animation_dirs, tmp_path / "out", tiny_files))
    assert not result.unavailable
    rows = {row["video"]: row for row in result.videos}
    assert math.isfinite(rows["talk"]["sync_c"]) and rows["talk"]["sync_d"] > 0 and rows["talk"]["sync_skipped"] == ""
    assert math.isnan(rows["mute"]["sync_c"]) and rows["mute"]["sync_skipped"] == "no audio track"
    if HAS_LPIPS:
        assert rows["talk"]["lpips"] == pytest.approx(0.0, abs=1e-6)  # against itself
        assert rows["mute"]["lpips"] > 1e-3  # against another person
    assert math.isfinite(result.set_level["fvd"]) and result.set_level["fvd"] > 0


def test_missing_models_are_reported_unavailable_with_their_paths(animation_dirs, tmp_path):
    cfg = config(animation_dirs, tmp_path / "out", {})
    cfg["metrics"] = ["sync", "lpips", "fvd"]
    result = evaluate(cfg)
    missing = tmp_path / "no-models-here"
    assert set(result.unavailable) >= {"sync", "lpips", "fvd"}
    assert f"SyncNet weights not found: {missing / 'syncnet_v2.model'}" in result.unavailable["sync"]
    assert f"{missing / 'alexnet-owt-7be5be79.pth'}" in result.unavailable["lpips"]
    assert f"I3D for FVD not found: {missing / 'i3d_torchscript.pt'}" in result.unavailable["fvd"]
