"""The preprocess pipeline end to end: bad inputs recorded, filters, caches, resume, shards, the verb."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import av
import pytest

from idvid.cli import main
from idvid.data.dataset import IdentityVideoDataset
from idvid.data.manifest import ANNOTATION_KEYS, load_annotations, read_manifest
from idvid.data.video_io import read_mp4, write_mp4
from idvid.preprocess import FilterSettings, Preprocessor
from idvid.preprocess.filters import failed_filters

from .conftest import CountingAnalyzer, make_raw, settings_for


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_each_bad_input_is_a_recorded_skip_and_the_run_goes_on(clip_library, tmp_path, monkeypatch):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "pair", "wall"])
    shutil.copy2(clip_library / "t1-1.mp4", raw / "no_caption.mp4")
    video = (clip_library / "t1-2.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(video[: len(video) // 2])  # cut mid-file, as an interrupted copy
    (raw / "truncated.txt").write_text("a cut video.")
    (raw / "notes.mp4").write_text("not a video at all")
    (raw / "notes.txt").write_text("a text file.")
    shutil.copy2(clip_library / "t1-2.mp4", raw / "locked.mp4")
    (raw / "locked.txt").write_text("a locked video.")
    frames = read_mp4(clip_library / "t1-2.mp4")
    write_mp4(raw / "short.mp4", frames[:3])  # 3 frames, the training clip needs 4
    (raw / "short.txt").write_text("a short video.")

    # Tests run as root, where chmod 000 does not stop reads: the permission error is raised by
    # the decoder's open for that one file, as an unreadable file would.
    real_open = av.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.mp4"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", guarded_open)
    summary = Preprocessor(settings_for(raw, tmp_path / "out"), CountingAnalyzer()).run()
    found = {name: (r["status"], r["reason"]) for name, r in records(tmp_path / "out").items()}
    assert found == {
        "astronaut": ("kept", None),
        "locked": ("skipped", "unreadable"),
        "no_caption": ("skipped", "missing_caption"),
        "notes": ("skipped", "not_a_video"),
        "pair": ("skipped", "several_faces"),
        "short": ("skipped", "too_short"),
        "truncated": ("skipped", "not_a_video"),
        "wall": ("skipped", "no_face"),
    }
    assert "Permission denied" in records(tmp_path / "out")["locked"]["detail"]
    assert summary["kept"] == 1 and summary["outcomes"]["skipped: several_faces"] == 1
    entries = read_manifest(summary["manifest"])
    assert [(e["id"], e["caption"]) for e in entries] == [("astronaut", "a video of astronaut.")]


def test_output_is_what_fit_reads(clip_library, tmp_path):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "t1-1"])
    summary = Preprocessor(settings_for(raw, tmp_path / "out"), CountingAnalyzer()).run()
    assert summary["kept"] == 2
    for entry in read_manifest(summary["manifest"]):
        ann = load_annotations(entry["annotations"])
        assert set(ANNOTATION_KEYS) <= set(ann)
        assert read_mp4(entry["video"]).shape == (8, 256, 256, 3) and ann["masks"].shape == (8, 256, 256)
        assert int(ann["embedding_dim"]) == 128 and str(ann["mask_source"]) == "landmark_hull"
        assert ann["valid"].all() and len(ann["clip_frames"]) == 4
    dataset = IdentityVideoDataset(summary["manifest"], num_frames=4, height=32, width=32)
    item = dataset[(0, 1)]
    assert item["video"].shape == (4, 3, 32, 32) and item["ref_embedding"].shape == (128,)


def test_filters_accept_and_reject_as_configured():
    metrics = {"second_face_ratio": 0.2, "valid_fraction": 0.9, "length": 60, "face_size": 150.0,
               "rotation_deg": 12.0, "edge_distance": 0.1, "motion_ratio": 0.05}  # fmt: skip
    assert failed_filters(metrics, FilterSettings(), min_length=49) == []
    cases = {
        "several_faces": {"second_face_ratio": 0.8},
        "few_face_frames": {"valid_fraction": 0.5},
        "too_short": {"length": 20},
        "small_face": {"face_size": 90.0},
        "head_rotation": {"rotation_deg": 35.0},
        "near_edge": {"edge_distance": -0.05},
        "too_much_motion": {"motion_ratio": 0.9},
    }
    for reason, change in cases.items():
        failed = failed_filters({**metrics, **change}, FilterSettings(), min_length=49)
        assert [r for r, _ in failed] == [reason]
    assert failed_filters(metrics, FilterSettings(min_motion_ratio=0.1), 49)[0] == (
        "too_static",
        "motion_ratio 0.05 < 0.1 (set by filters.min_motion_ratio)",
    )
    assert (
        "(set by clip.num_frames x clip.frame_stride)"
        in failed_filters({**metrics, "length": 20}, FilterSettings(), 49)[0][1]
    )
    # None switches a filter off.
    assert failed_filters({**metrics, "rotation_deg": 80.0}, FilterSettings(max_rotation_deg=None), 49) == []


def test_cache_reused_and_only_dependent_work_redone(clip_library, tmp_path):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "t1-1"])
    settings = settings_for(raw, tmp_path / "out")
    first = CountingAnalyzer()
    Preprocessor(settings, first).run()
    assert first.detect_calls == 16
    annotations = tmp_path / "out" / "annotations" / "astronaut.npz"
    written = annotations.stat().st_mtime_ns

    again = CountingAnalyzer()
    summary = Preprocessor(settings, again).run()
    assert again.detect_calls == again.embed_calls == 0 and summary["reused"] == 2
    assert annotations.stat().st_mtime_ns == written

    # A filter threshold: the cached detections are reused, the decision is redone.
    strict = dataclasses.replace(settings, filters=dataclasses.replace(settings.filters, min_face_size=200))
    counting = CountingAnalyzer()
    summary = Preprocessor(strict, counting).run()
    assert counting.detect_calls == 0 and summary["outcomes"] == {"skipped: small_face": 2}
    assert not annotations.exists() and summary["manifest"] is None  # a dropped clip leaves no stale output

    # A detector setting invalidates the detections; an edited input only its own.
    sparse = dataclasses.replace(settings, detect_every=2)
    counting = CountingAnalyzer()
    Preprocessor(sparse, counting).run()
    assert counting.detect_calls == 8
    os.utime(raw / "t1-1.mp4", ns=(1, 1))
    counting = CountingAnalyzer()
    summary = Preprocessor(sparse, counting).run()
    assert counting.detect_calls == 4 and summary["reused"] == 1


def test_resume_after_a_crash_redoes_only_unfinished_clips(clip_library, tmp_path, monkeypatch):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "t1-1", "t1-2"])
    settings = settings_for(raw, tmp_path / "out")
    real = Preprocessor.analyze_and_write
    done = []

    def crash_on_second(self, job, record):
        if len(done) == 1:
            # Killed while writing: a half-written annotations file under its final name, no record.
            (self.out / "annotations").mkdir(exist_ok=True)
            (self.out / "annotations" / f"{job.clip_id}.npz").write_bytes(b"PK\x03\x04half")
            raise KeyboardInterrupt
        done.append(job.clip_id)
        return real(self, job, record)

    monkeypatch.setattr(Preprocessor, "analyze_and_write", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        Preprocessor(settings, CountingAnalyzer()).run()
    assert list(records(tmp_path / "out")) == ["astronaut"]
    assert not (tmp_path / "out" / "manifest.jsonl").exists()

    monkeypatch.setattr(Preprocessor, "analyze_and_write", real)
    counting = CountingAnalyzer()
    summary = Preprocessor(settings, counting).run()
    assert counting.detect_calls == 16  # t1-1 and t1-2 only
    assert summary["reused"] == 1 and summary["kept"] == 3
    for entry in read_manifest(summary["manifest"]):
        assert load_annotations(entry["annotations"])["valid"].all()  # the half-written file was replaced
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_ranks_take_disjoint_shards_and_the_last_one_writes_the_manifest(clip_library, tmp_path):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "t1-1", "t1-2"])
    settings = settings_for(raw, tmp_path / "out", world_size=2)
    rank0 = Preprocessor(dataclasses.replace(settings, rank=0), CountingAnalyzer()).run()
    assert rank0["inputs"] == 2 and rank0["manifest"] is None  # rank 1 has not run yet
    rank1 = Preprocessor(dataclasses.replace(settings, rank=1), CountingAnalyzer()).run()
    assert rank1["inputs"] == 1
    assert [e["id"] for e in read_manifest(rank1["manifest"])] == ["astronaut", "t1-1", "t1-2"]
    with pytest.raises(ValueError, match="rank must be in"):
        Preprocessor(dataclasses.replace(settings, rank=2), CountingAnalyzer())


def test_captions_from_csv_and_jsonl(clip_library, tmp_path):
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut", "t1-1"], captions=False)
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text('video,caption,identity\nastronaut.mp4,"an astronaut, smiling.",eileen\n')
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"path": "t1-1.mp4", "cap": "a man at a poker table."}) + "\n")
    (raw / "astronaut.txt").write_text("the sidecar loses to the captions file.")
    summary = Preprocessor(settings_for(raw, tmp_path / "a", captions=csv_file), CountingAnalyzer()).run()
    entries = read_manifest(summary["manifest"])
    assert [(e["id"], e["caption"], e["identity"]) for e in entries] == [
        ("astronaut", "an astronaut, smiling.", "eileen")
    ]
    assert records(tmp_path / "a")["t1-1"]["reason"] == "missing_caption"
    summary = Preprocessor(settings_for(raw, tmp_path / "b", captions=jsonl), CountingAnalyzer()).run()
    entries = {e["id"]: e["caption"] for e in read_manifest(summary["manifest"])}
    assert entries == {"astronaut": "the sidecar loses to the captions file.", "t1-1": "a man at a poker table."}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,words\nx.mp4,hello\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: needs a video \(video or path\) and a caption"):
        Preprocessor(settings_for(raw, tmp_path / "c", captions=bad), CountingAnalyzer())


def test_the_verb_runs_the_pipeline_and_bad_configuration_fails_clearly(clip_library, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without data.out, Hydra's log goes to ./outputs/preprocess
    raw = make_raw(clip_library, tmp_path / "raw", ["astronaut"])
    out = tmp_path / "out"
    small = ["filters.min_face_size=64", "filters.max_rotation_deg=60", "clip.num_frames=4", "clip.frame_stride=1"]
    main(["preprocess", f"data.raw={raw}", f"data.out={out}", *small])
    assert [e["id"] for e in read_manifest(out / "manifest.jsonl")] == ["astronaut"]
    assert list((out / "logs").iterdir())  # Hydra's log of the run sits with the data
    capsys.readouterr()
    bad_configs = {
        "dlib model file not found: .*nowhere": [
            f"data.out={tmp_path / 'x'}",
            f"face.options.models_dir={tmp_path / 'nowhere'}",
        ],
        "raw video folder not found": [f"data.raw={tmp_path / 'missing'}", f"data.out={tmp_path / 'y'}"],
        "preprocess needs data.out": [],
    }
    for message, overrides in bad_configs.items():
        with pytest.raises(SystemExit):  # Hydra prints the error and exits with status 1
            main(["preprocess", f"data.raw={raw}", *overrides])
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x" / "records").exists()  # failed before touching any video
