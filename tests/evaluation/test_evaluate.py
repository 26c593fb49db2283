"""The evaluate verb end to end on real-photo videos, tiny random models and missing weights."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from idvid.data.video_io import write_mp4
from idvid.evaluation.evaluate import evaluate
from idvid.evaluation.inputs import pair_inputs, read_prompts
from idvid.faces import tiny_insightface
from idvid.verbs.evaluate import summary

from ..conftest import REPO
from .conftest import run_cli, write_png


def config(eval_dirs, out: Path, **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "src" / "idvid" / "conf" / "evaluation" / "default.yaml"))
    cfg["models"]["root"] = str(out.parent / "no-models-here")
    cfg["models"] = {k: v.replace("${.root}", cfg["models"]["root"]) for k, v in cfg["models"].items()}
    cfg.update(videos=str(eval_dirs["videos"]), refs=str(eval_dirs["refs"]), prompts=str(eval_dirs["prompts"]))
    cfg.update(out=str(out), device="cpu", **overrides)
    return cfg


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_pairing_records_what_is_missing(eval_dirs):
    items, skipped = pair_inputs(eval_dirs["videos"], eval_dirs["refs"], eval_dirs["prompts"])
    assert [i.name for i in items] == ["other", "same"]
    reasons = {s.name: s.reason for s in skipped}
    assert "noref.png or noref.jpg" in reasons["noref"] and str(eval_dirs["refs"]) in reasons["noref"]
    assert "no line `noprompt<TAB>prompt`" in reasons["noprompt"]


def test_bad_prompt_lines_and_folders_are_clear_errors(tmp_path, eval_dirs):
    bad = tmp_path / "prompts.tsv"
    bad.write_text("same a person without a tab\n")
    with pytest.raises(ValueError, match=r"prompts.tsv:1: expected `NAME<TAB>prompt`"):
        read_prompts(bad)
    with pytest.raises(FileNotFoundError, match="videos folder not found"):
        pair_inputs(tmp_path / "nope", eval_dirs["refs"], eval_dirs["prompts"])


def test_every_metric_runs_on_tiny_models_and_missing_weights_are_reported(tmp_path, eval_dirs, tiny_models):
    out = tmp_path / "out"
    cfg = config(eval_dirs, out, tensorboard_dir=str(tmp_path / "tb"), num_frames=4)
    cfg["models"].update({name: str(path) for name, path in tiny_models.items()})
    result = evaluate(cfg)

    expected_cur = str(out.parent / "no-models-here" / "glint360k_curricular_face_r101_backbone.bin")
    expected_arc = str(out.parent / "no-models-here" / "antelopev2")
    assert set(result.unavailable) == {"facesim_arc", "facesim_cur"}
    assert expected_cur in result.unavailable["facesim_cur"] and expected_arc in result.unavailable["facesim_arc"]
    aggregate_md = (out / "aggregate.md").read_text()
    assert expected_cur in aggregate_md and "| facesim_cur | unavailable |" in aggregate_md
    printed = summary(result, out)
    assert f"unavailable: facesim_cur: CurricularFace weights not found: {expected_cur}" in printed

    per_video = {row["video"]: row for row in rows(out / "per_video.csv")}
    assert set(per_video) == {"same", "other"}
    for column in ("facesim_dlib", "clipscore", "clip_t", "clip_i", "smoothness_clip", "dino", "smoothness_dino"):
        assert all(math.isfinite(float(row[column])) for row in per_video.values()), column
    assert float(per_video["same"]["facesim_dlib"]) > float(per_video["other"]["facesim_dlib"]) + 0.08
    assert float(per_video["same"]["fid_face_per_frame"]) >= 0
    assert per_video["same"]["freq_region"] == "face"
    assert {"fid_face", "set_freq_low", "set_freq_high"} <= set(result.set_level)
    assert (out / "frequency" / "same_spectrum.png").is_file() and (out / "frequency" / "set_profile.png").is_file()
    assert {row["video"] for row in rows(out / "skipped.csv")} == {"noref", "noprompt"}

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "eval/facesim_dlib" in events.Tags()["scalars"] and "eval/fid_face" in events.Tags()["scalars"]


def test_the_verb_runs_through_hydra_with_a_metric_subset(tmp_path, eval_dirs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_cli(["evaluate", f"videos={eval_dirs['videos']}", f"refs={eval_dirs['refs']}"])
    assert "evaluate needs prompts=, out=: python -m idvid evaluate videos=DIR" in capsys.readouterr().err
    out = tmp_path / "verb"
    run_cli(
        [
            "evaluate",
            f"videos={eval_dirs['videos']}",
            f"refs={eval_dirs['refs']}",
            f"prompts={eval_dirs['prompts']}",
            f"out={out}",
            "metrics=[frequency,clip]",
            f"models.root={tmp_path / 'models'}",
            "num_frames=4",
        ]
    )
    printed = capsys.readouterr().out
    assert f"unavailable: clip: CLIP model not found: {tmp_path / 'models' / 'clip-vit-base-patch32'}" in printed
    assert "| facesim_dlib |" in printed  # the offline identity score is always there
    header = rows(out / "per_video.csv")[0].keys()
    assert {"facesim_dlib", "freq_low", "freq_high"} <= set(header) and "clipscore" not in header
    assert (out / ".hydra" / "config.yaml").is_file()
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['facesim'\]"):
        evaluate(config(eval_dirs, tmp_path / "x", metrics=["facesim"]))


def test_facesim_arc_and_the_insightface_detector_on_tiny_antelopev2_stand_ins(tmp_path):
    # The stand-in detector fires on a pure red 32x32 cell (see idvid.faces.tiny_insightface); the
    # recognizer is a fixed function of the aligned crop, so a video of the reference itself scores 1.
    models = tiny_insightface.write_tiny_antelopev2(tmp_path / "antelopev2")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 120, (320, 320, 3), dtype=np.uint8)
    image[128:160, 128:160] = (255, 0, 0)
    videos, refs = tmp_path / "videos", tmp_path / "refs"
    videos.mkdir()
    write_mp4(videos / "same.mp4", np.stack([image] * 4))
    write_mp4(videos / "blank.mp4", np.zeros((4, 320, 320, 3), np.uint8))
    for name in ("same", "blank"):
        write_png(refs / f"{name}.png", image)
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("same\ta red square\nblank\ta red square\n")
    cfg = config({"videos": videos, "refs": refs, "prompts": prompts}, tmp_path / "out", metrics=["facesim_arc"])
    cfg["models"]["insightface"] = str(models)
    cfg["face"] = {"name": "insightface", "options": {"det_size": 320}}  # models_dir: models.insightface
    result = evaluate(cfg)
    rows = {row["video"]: row for row in result.videos}
    assert rows["same"]["facesim_arc"] == pytest.approx(1.0, abs=5e-3)  # mp4 compression only
    assert rows["same"]["frames_with_face"] == 4 and rows["same"]["facesim_arc_frames_skipped"] == 0
    assert math.isnan(rows["blank"]["facesim_arc"]) and rows["blank"]["facesim_arc_frames_skipped"] == 4
    assert not result.unavailable


def test_metrics_are_registered_plugins_and_a_registered_one_runs(tmp_path, eval_dirs):
    import uuid

    from idvid.evaluation.metrics import Metric, metric_names
    from idvid.registry import REGISTRIES, PluginKind, register_metric

    assert {"facesim_dlib", "facesim_arc", "facesim_cur", "clip", "dino", "fid", "frequency"} <= set(metric_names())
    name = f"test_lab.frames_{uuid.uuid4().hex[:8]}"

    @register_metric(name)
    class FaceFrames(Metric):
        """How many sampled frames have a face; the set's total at the end."""

        def __init__(self):
            self.total = 0

        @classmethod
        def from_config(cls, cfg, out, device):
            return cls()

        def video(self, ctx):
            found = sum(face is not None for face in ctx.faces)
            self.total += found
            return {"face_frames": found}

        def finish(self, out):
            return {"face_frames_total": self.total}

    try:
        result = evaluate(config(eval_dirs, tmp_path / "out", metrics=[name], num_frames=4))
    finally:
        REGISTRIES[PluginKind.METRIC]._entries.pop(name, None)
    per_video = {row["video"]: row for row in rows(tmp_path / "out" / "per_video.csv")}
    assert {row["face_frames"] for row in per_video.values()} <= {"0", "1", "2", "3", "4"}
    assert result.set_level["face_frames_total"] == sum(int(row["face_frames"]) for row in per_video.values())
    assert "facesim_dlib" in rows(tmp_path / "out" / "per_video.csv")[0]  # the offline identity score is always run
