"""Preprocess keeps each clip's audio (muxed, its Whisper log-mel cached), eye and mouth boxes, the lip-sync filter."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from idvid.data.audio import clip_waveform, has_audio_stream, load_audio, log_mel, mel_window
from idvid.data.dataset import IdentityVideoDataset
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4, write_mp4
from idvid.demo import synth_voice
from idvid.errors import ConfigError
from idvid.preprocess import Preprocessor

from ..evaluation.models import save_tiny_syncnet
from .conftest import CountingAnalyzer, make_raw, settings_for


@pytest.fixture(scope="module")
def raw(clip_library, tmp_path_factory):
    """astronaut with a voice track (1 s at 8 fps), t1-1 silent."""
    folder = make_raw(clip_library, tmp_path_factory.mktemp("raw"), ["astronaut", "t1-1"])
    voice = synth_voice(np.random.default_rng(5), 1.0)
    write_mp4(folder / "astronaut.mp4", read_mp4(clip_library / "astronaut.mp4"), fps=8, audio=voice)
    return folder


@pytest.fixture(scope="module")
def out(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert summary["kept"] == 2
    return out


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_a_clip_keeps_its_audio_and_its_whisper_features(raw, out):
    entries = {entry["id"]: entry for entry in read_manifest(out / "manifest.jsonl")}
    ann = load_annotations(entries["astronaut"]["annotations"], with_images=False)
    first = int(ann["source_frames"][0])
    expected = clip_waveform(load_audio(raw / "astronaut.mp4"), first, len(ann["valid"]), 8.0)
    assert bool(ann["has_audio"]) and records(out)["astronaut"]["has_audio"] is True
    np.testing.assert_array_equal(ann["audio_mel"], log_mel(expected))
    assert ann["audio_mel"].shape == (80, 100)  # 8 frames at 8 fps: 1 s of 100 mel frames
    np.testing.assert_allclose(ann["frame_times"], np.arange(8) / 8)
    # The written clip carries the same sound (AAC: close, not bit-equal).
    kept = load_audio(entries["astronaut"]["video"])[: len(expected)]
    assert np.corrcoef(kept, expected)[0, 1] > 0.98


def test_a_clip_without_audio_is_kept_and_recorded_as_such(out):
    entry = {entry["id"]: entry for entry in read_manifest(out / "manifest.jsonl")}["t1-1"]
    ann = load_annotations(entry["annotations"], with_images=False)
    assert not bool(ann["has_audio"]) and ann["audio_mel"].shape == (80, 0)
    assert records(out)["t1-1"]["has_audio"] is False and not has_audio_stream(entry["video"])


def test_eye_and_mouth_boxes_sit_inside_the_face_with_the_eyes_above_the_mouth(out):
    for entry in read_manifest(out / "manifest.jsonl"):
        ann = load_annotations(entry["annotations"], with_images=False)
        eyes, mouth, face = ann["eye_boxes"][ann["valid"]], ann["mouth_boxes"][ann["valid"]], ann["boxes"][ann["valid"]]
        np.testing.assert_array_equal(eyes[:, :2], ann["landmarks"][ann["valid"]][:, 36:48].min(axis=1))
        assert (eyes[:, 3] < mouth[:, 1]).all()  # the eyes' lowest point above the mouth's highest
        for box in (eyes, mouth):
            assert (box[:, :2] >= face[:, :2] - 4).all() and (box[:, 2:] <= face[:, 2:] + 4).all()
            assert (box[:, 2:] > box[:, :2]).all()


def test_the_dataset_returns_the_audio_window_of_its_frames(out):
    dataset = IdentityVideoDataset(out / "manifest.jsonl", num_frames=3, frame_stride=2, height=32, width=32,
                                   audio_mel_frames=60)  # fmt: skip
    ids = [entry["id"] for entry in dataset.entries]
    for index, clip_id in enumerate(ids):
        item = dataset[(7, index)]
        ann = load_annotations(dataset.entries[index]["annotations"], with_images=False)
        frames = item["frame_indices"].numpy()
        assert bool(item["has_audio"]) == (clip_id == "astronaut")
        np.testing.assert_allclose(item["audio_frame_times"].numpy(), (frames - frames[0]) / 8, atol=1e-6)
        assert item["audio_mel"].shape == (80, 60)
        if clip_id == "astronaut":
            window, _ = mel_window(ann["audio_mel"], ann["frame_times"][frames], 60)
            np.testing.assert_array_equal(item["audio_mel"].numpy(), window)
        else:
            assert (item["audio_mel"] == 0).all()
        eyes, mouth = item["frame_eye_boxes"], item["frame_mouth_boxes"]
        landmarks = item["frame_landmarks"]
        np.testing.assert_allclose(eyes[:, 2:].numpy(), landmarks[:, 36:48].amax(dim=1).numpy())
        np.testing.assert_allclose(mouth[:, :2].numpy(), landmarks[:, 48:].amin(dim=1).numpy())


def test_the_lip_sync_filter_judges_clips_with_audio_only(raw, out, tmp_path):
    weights = save_tiny_syncnet(tmp_path / "syncnet_v2.model")
    out = Path(shutil.copytree(out, tmp_path / "out"))  # its face cache is reused; the shared output stays as it is
    base = settings_for(raw, out)
    lenient = dataclasses.replace(base.filters, min_sync_confidence=-1e9, max_sync_distance=1e9)
    settings = dataclasses.replace(base, filters=lenient, syncnet_weights=weights)
    summary = Preprocessor(settings, CountingAnalyzer()).run()
    assert summary["kept"] == 2
    metrics = records(out)["astronaut"]["metrics"]
    assert np.isfinite(metrics["sync_confidence"]) and metrics["sync_distance"] > 0
    assert "sync_confidence" not in records(out)["t1-1"]["metrics"]  # no audio: not judged
    strict = dataclasses.replace(base.filters, min_sync_confidence=1e9)
    Preprocessor(dataclasses.replace(base, filters=strict, syncnet_weights=weights), CountingAnalyzer()).run()
    record = records(out)["astronaut"]
    assert record["status"] == "skipped" and record["reason"] == "lip_sync_confidence"
    assert "filters.min_sync_confidence" in record["detail"]
    assert records(out)["t1-1"]["status"] == "kept"


def test_the_lip_sync_filter_needs_its_weights(raw, tmp_path):
    base = settings_for(raw, tmp_path / "out")
    filters = dataclasses.replace(base.filters, max_sync_distance=8.5)
    with pytest.raises(ConfigError, match="syncnet_weights is null"):
        Preprocessor(dataclasses.replace(base, filters=filters), CountingAnalyzer())
    with pytest.raises(FileNotFoundError, match=r"missing\.model.*syncnet_v2\.model"):
        Preprocessor(dataclasses.replace(base, filters=filters, syncnet_weights=tmp_path / "missing.model"),
                     CountingAnalyzer())  # fmt: skip


def test_annotations_without_audio_arrays_give_no_audio_and_times_from_the_frame_rate(out, tmp_path):
    # As an importer (ConsisID's annotations) or an older preprocess writes them.
    entry = {entry["id"]: entry for entry in read_manifest(out / "manifest.jsonl")}["astronaut"]
    ann = load_annotations(entry["annotations"])
    np.savez(
        tmp_path / "old.npz", **{k: v for k, v in ann.items() if k not in ("audio_mel", "has_audio", "frame_times")}
    )
    line = {**entry, "video": entry["video"], "annotations": str(tmp_path / "old.npz")}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    item = IdentityVideoDataset(tmp_path / "manifest.jsonl", num_frames=3, height=32, width=32, audio_mel_frames=40)[0]
    assert not bool(item["has_audio"]) and item["audio_mel"].shape == (80, 40) and (item["audio_mel"] == 0).all()
    frames = item["frame_indices"].numpy()
    np.testing.assert_allclose(item["audio_frame_times"].numpy(), (frames - frames[0]) / 8, atol=1e-6)
