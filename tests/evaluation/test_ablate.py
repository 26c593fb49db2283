"""`python -m idvid ablate` on two plans of 2 steps: the table, a diverged run marked unstable, and resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import time

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from idvid import config_packages
from idvid.verbs.ablate import ablate, failure_reason, prepare_eval_set, rewrite_prompt, table_rows

from .conftest import run_cli, write_png


@pytest.mark.slow
@pytest.mark.needs_plugin("idvid_consisid")
def test_ablate_writes_table_3_marks_divergence_and_skips_finished_work(tmp_path, tiny_models, capsys):
    out = tmp_path / "ablation"
    args = [
        "ablate",
        f"out={out}",
        "sweep=consisid_table3",  # the plugin's sweep: its experiments, overrides and Table 3's columns
        "experiments=[plan_a,plan_b]",
        'fit_overrides=["trainer.max_steps=2","model.validation.sample=false","trainer.limit_val_batches=0"]',
        # plan_b is made to diverge: a huge learning rate, and the NaN guard stops at the first bad step.
        'experiment_overrides.plan_b=["optimizer.lr=1e30","lr_scheduler.warmup_steps=0",'
        '"model.non_finite.max_consecutive_steps=1"]',
        "eval_set.steps=2",
        "eval_set.count=2",
        "evaluate.metrics=[facesim_dlib,facesim_cur,clip,frequency]",
        f"evaluate.models.root={tmp_path / 'models'}",
        f"evaluate.models.clip={tiny_models['clip']}",
        "evaluate.device=cpu",
    ]
    run_cli(args)
    printed = capsys.readouterr().out
    assert "SMALL SCALE" in printed and "NOT paper results" in printed

    with (out / "ablation.csv").open() as handle:
        rows = {row["plan"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"plan_a", "plan_b"}
    plan_a, plan_b = rows["plan_a"], rows["plan_b"]
    assert plan_a["status"] == "ok"
    # ablate's fits start from the tiny demo, which the default evaluation set reads (fit's default is toy).
    assert "scale=tiny" in json.loads((out / "plan_a" / "fit_status.json").read_text())["command"]
    for column in ("CLIPScore", "low-freq log-amp", "high-freq log-amp"):
        assert math.isfinite(float(plan_a[column])), column
    assert plan_a["FaceSim-Cur"] == "unavailable"
    assert plan_b["status"] == "unstable" and "consecutive steps with a non-finite loss" in plan_b["note"]
    assert plan_b["CLIPScore"] == ""  # a diverged run is not sampled

    table = (out / "ablation.md").read_text()
    assert "| plan | status | FaceSim-Arc | FaceSim-Cur | CLIPScore | FID (official per-frame) |" in table
    assert str(tmp_path / "models" / "glint360k_curricular_face_r101_backbone.bin") in table
    assert len(list((out / "plan_a" / "videos").glob("*.mp4"))) == 2
    assert (out / "ablation_spectra.png").is_file() and (out / "ablation_profiles.png").is_file()
    tags = {
        value.tag
        for path in (out / "tensorboard" / "plan_a").glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    }
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "ablation/set_freq_high"} <= tags

    # Re-running skips the finished experiments: no fit, no sampling, same results.
    fit_log = (out / "plan_a" / "fit.log").stat().st_mtime_ns
    start = time.perf_counter()
    run_cli(args)
    printed = capsys.readouterr().out
    assert "plan_a: finished earlier, skipped" in printed and "plan_b: finished earlier, skipped" in printed
    assert (out / "plan_a" / "fit.log").stat().st_mtime_ns == fit_log
    assert time.perf_counter() - start < 20
    assert json.loads((out / "plan_a" / "result.json").read_text())["status"] == "ok"

    # A different evaluation set would make the table compare different inputs: refused.
    with pytest.raises(ValueError, match="eval_set differs"):
        prepare_eval_set(
            {"eval_set": {**json.loads((out / "eval_set" / "eval_set.json").read_text()), "count": 3}}, out
        )


def test_a_failed_fit_is_recorded_and_retried_not_marked_finished(tmp_path, people, capsys):
    refs = tmp_path / "refs"
    write_png(refs / "person.png", people[0][0])
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("person\ta person looking at the camera\n")
    cfg = OmegaConf.to_container(compose_ablate([f"out={tmp_path / 'out'}", "experiments=[plan_zz]"]))
    cfg["eval_set"].update(refs=str(refs), prompts=str(prompts))
    results = ablate(cfg)
    assert results["plan_zz"]["status"] == "failed"
    assert "plan_zz" in results["plan_zz"]["reason"]  # Hydra's error names the unknown experiment
    assert not (tmp_path / "out" / "plan_zz" / "result.json").exists()  # so a re-run tries it again
    assert "| plan_zz | failed |" in (tmp_path / "out" / "ablation.md").read_text()
    assert (tmp_path / "out" / "eval_set" / "refs" / "person_s0.png").is_file()


def test_ablate_without_experiments_names_the_installed_sweeps():
    from idvid.errors import ConfigError

    with pytest.raises(ConfigError, match=r"experiments=\[.*sweep=NAME; installed: "):
        ablate(OmegaConf.to_container(compose_ablate(["out=unused"])))


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_sweep_sets_the_experiments_and_the_report():
    cfg = compose_ablate(["sweep=consisid_table3"])
    assert list(cfg.experiments) == [f"plan_{letter}" for letter in "abcdefg"]
    assert "Table 3" in cfg.report.title and cfg.report.columns[0].metric == "facesim_arc"
    assert list(compose_ablate(["sweep=consisid_table3", "experiments=[plan_c]"]).experiments) == ["plan_c"]


def test_the_kits_toy_sweep_takes_any_experiments_and_consisid_toy_is_it_with_the_plans():
    toy = OmegaConf.to_container(compose_ablate(["sweep=toy", "experiments=[baseline]"]))
    assert toy["experiments"] == ["baseline"] and "backbone=cogvideox_toy" in toy["fit_overrides"]
    assert toy["eval_set"]["manifest"] == "${idvid.toy_manifest:heldout}"
    assert toy["evaluate"]["metrics"] == ["pixel_identity", "frequency"]
    if importlib.util.find_spec("idvid_consisid") is None:
        return
    plans = OmegaConf.to_container(compose_ablate(["sweep=consisid_toy"]))
    assert plans.pop("experiments") == [f"plan_{letter}" for letter in "abcdefg"]
    assert plans.pop("experiment_overrides") == {f"plan_{letter}": [] for letter in "abcdefg"}
    assert "ConsisID" in plans["report"].pop("title")
    toy.pop("experiments"), toy.pop("experiment_overrides"), toy["report"].pop("title")
    assert plans == toy


def test_fit_scale_is_the_scale_of_every_fit(tmp_path, monkeypatch):
    """ablate's fits start from the tiny demo (what the default evaluation set reads); fit_scale changes it."""
    from idvid.verbs import ablate as ablate_verb

    commands = []

    def child(command, **_):  # the fit's child process, not started: its command line is what is checked
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(ablate_verb.subprocess, "run", child)
    for overrides, scale in (([], "scale=tiny"), (["fit_scale=toy"], "scale=toy")):
        cfg = OmegaConf.to_container(compose_ablate(overrides))
        status = ablate_verb.run_fit("plan_c", cfg, tmp_path / scale)
        assert commands[-1][3:6] == ["fit", "experiment=plan_c", scale]
        assert status["status"] == "failed" and status["reason"] == "exit code 1"


def compose_ablate(overrides: list[str]):
    return config_packages.compose("ablate", overrides)


@pytest.mark.parametrize(
    ("log_text", "expected"),
    [
        (
            "Traceback ...\n    raise X(\nidvid.training.guard.DivergenceError: 5 consecutive steps\n",
            "DivergenceError: 5",
        ),
        (
            "In 'config': Could not find 'experiment/plan_zz'\n\nSet the environment variable HYDRA_FULL_ERROR=1",
            "plan_zz",
        ),
        ("step 1\nKilled\n", "Killed"),
        ("", "exit code 9"),
    ],
)
def test_failure_reason_is_the_line_that_says_what_happened(log_text, expected):
    assert expected in failure_reason(log_text, 9)


def test_any_aggregate_is_a_column_marked_unavailable_with_its_metric_group():
    columns = [
        {"title": "CLIP-I", "metric": "clip_i"},
        {"title": "DINO smoothness", "metric": "smoothness_dino"},
        {"title": "FaceSim-dlib", "metric": "facesim_dlib"},
        {"title": "Mine", "metric": "my_score", "group": "my_lab.metric"},
    ]
    result = {"status": "ok", "metrics": {"clip_i": 0.7, "facesim_dlib": 0.3, "my_score": 1.0}}
    result["unavailable"] = {"dino": "no DINO folder"}
    (row,) = table_rows({"magicme_id": result}, columns)
    assert (row["CLIP-I"], row["DINO smoothness"], row["FaceSim-dlib"], row["Mine"]) == (0.7, "unavailable", 0.3, 1.0)
    result["unavailable"] = {"my_lab.metric": "no model"}
    assert table_rows({"magicme_id": result}, columns)[0]["Mine"] == "unavailable"


def test_prompt_rewrites_change_the_first_whole_word_only():
    assert rewrite_prompt("a person and a person", {"person": "<id> person"}) == "a <id> person and a person"
    assert rewrite_prompt("a personal car", {"person": "<id> person"}) == "a personal car"
    assert compose_ablate(["+prompt_rewrites.x={person: '<id> person'}"]).prompt_rewrites.x.person == "<id> person"
