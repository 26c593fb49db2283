"""The bundled demo builder: contents, caching, atomic writes, determinism."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from idvid import demo as demo_module
from idvid.data.manifest import ANNOTATION_KEYS, load_annotations, read_manifest
from idvid.data.video_io import read_mp4
from idvid.demo import DEMO_SEED, DEMO_VERSION, build_demo, demo_settings, render_clip, source_photos
from idvid.faces import DlibFaceAnalyzer
from idvid.preprocess import Preprocessor

# All 7 faces (1 astronaut + 6 in t1.jpg) keep at least 8 frames with a detected face.
EXPECTED_IDS = ["astronaut-0"] + [f"t1-{i}" for i in range(6)]


def test_manifest_lists_seven_identities(demo_manifest):
    assert demo_manifest.name == "manifest.jsonl" and demo_manifest.parent.name == DEMO_VERSION
    entries = read_manifest(demo_manifest)
    assert [entry["id"] for entry in entries] == EXPECTED_IDS
    assert len({entry["identity"] for entry in entries}) == 7
    for entry in entries:
        assert re.fullmatch(r"[a-z ,.]+", entry["caption"]), entry["caption"]


def test_annotations_match_documented_format(demo_manifest):
    for entry in read_manifest(demo_manifest):
        video = read_mp4(entry["video"])
        assert video.shape == (16, 256, 256, 3)
        ann = load_annotations(entry["annotations"])
        assert set(ANNOTATION_KEYS) <= set(ann)
        valid = ann["valid"]
        assert valid.dtype == bool and valid.shape == (16,) and valid.sum() >= 8
        assert ann["boxes"].shape == (16, 4) and ann["boxes"].dtype == np.float32
        assert ann["kps"].shape == (16, 5, 2) and ann["kps"].dtype == np.float32
        assert ann["masks"].shape == (16, 256, 256) and ann["masks"].dtype == np.uint8
        assert ann["embeddings"].shape == (16, 128) and ann["embeddings"].dtype == np.float32
        assert ann["landmarks"].shape == (16, 68, 2) and np.isfinite(ann["landmarks"][valid]).all()
        assert ann["reference_faces"].shape == (16, 512, 512, 3) and ann["reference_faces"].dtype == np.uint8
        assert (ann["reference_faces"][~valid] == 0).all() and (ann["reference_faces"][valid, 0, 0] == 255).all()
        assert ann["reference_matrices"].shape == (16, 2, 3) and np.isfinite(ann["reference_matrices"][valid]).all()
        assert int(ann["embedding_dim"]) == 128 and str(ann["mask_source"]) == "landmark_hull"
        assert np.isfinite(ann["kps"][valid]).all() and np.isnan(ann["kps"][~valid]).all()
        assert np.isnan(ann["boxes"][~valid]).all()
        assert (ann["masks"][valid].reshape(valid.sum(), -1).sum(1) > 500).all()
        assert ann["masks"][~valid].sum() == 0
        np.testing.assert_allclose(np.linalg.norm(ann["embeddings"][valid], axis=1), 1.0, atol=1e-5)
        assert (ann["embeddings"][~valid] == 0).all()
        # The face fills roughly 35-55% of the frame width, as the builder aims for.
        widths = ann["boxes"][valid, 2] - ann["boxes"][valid, 0]
        assert (widths > 0.3 * 256).all() and (widths < 0.6 * 256).all()
        # One person per clip: every face frame is far more alike than different people are.
        embs = ann["embeddings"][valid]
        assert (embs @ embs.T).min() > 0.95


def test_second_call_is_instant_and_same_path(demo_manifest):
    start = time.perf_counter()
    again = build_demo(demo_manifest.parent.parent)
    assert time.perf_counter() - start < 0.5
    assert again == demo_manifest


def test_default_cache_dir_comes_from_env(demo_cache, demo_manifest, monkeypatch):
    monkeypatch.setenv("IDVID_CACHE", str(demo_cache))
    assert build_demo() == demo_manifest


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    def failing_build(out_dir):
        (out_dir / "manifest.jsonl").write_text("partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_build_into", failing_build)
    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final folder, and the temp folder is cleaned up


def test_clip_rebuild_is_identical(demo_manifest, tmp_path):
    # Rendering one clip again and running it through the preprocessing pipeline alone
    # reproduces the session build bit for bit: the demo is made by that pipeline, nothing else.
    raw = tmp_path / "raw"
    raw.mkdir()
    analyzer = DlibFaceAnalyzer()
    photo = source_photos()["t1"]
    render_clip(photo, analyzer.detect(photo)[3], "t1-3", (DEMO_SEED, 1, 3), raw)
    summary = Preprocessor(demo_settings(raw, tmp_path / "out"), analyzer).run()
    assert summary["outcomes"] == {"kept": 1}
    entry = read_manifest(summary["manifest"])[0]
    original = {e["id"]: e for e in read_manifest(demo_manifest)}["t1-3"]
    assert entry["caption"] == original["caption"]
    assert open(entry["video"], "rb").read() == open(original["video"], "rb").read()
    new, old = load_annotations(entry["annotations"]), load_annotations(original["annotations"])
    assert set(new) == set(old)
    for key in new:
        np.testing.assert_array_equal(new[key], old[key])


def test_every_clip_has_its_synthetic_voice_track(demo_manifest):
    from idvid.data.audio import load_audio
    from idvid.demo import FPS, NUM_FRAMES

    for entry in read_manifest(demo_manifest):
        ann = load_annotations(entry["annotations"], with_images=False)
        assert bool(ann["has_audio"]) and ann["audio_mel"].shape == (80, NUM_FRAMES * 100 // FPS), entry["id"]
        waveform = load_audio(entry["video"])
        loudness = np.sqrt(np.convolve(waveform**2, np.ones(800) / 800, mode="valid"))  # 50 ms RMS
        assert loudness.max() > 0.1 and loudness.min() < 0.02 * loudness.max(), entry["id"]  # syllable-like pulses
