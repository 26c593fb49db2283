"""`python -m idvid ...` end to end, as a user runs it: exit codes, printed output and run dirs."""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from idvid.cli import VERBS, main
from idvid.data.manifest import read_manifest
from idvid.data.video_io import read_mp4
from idvid.demo import build_demo
from idvid.injection import SITE_DESCRIPTIONS, Site
from idvid.registry import REGISTRIES, PluginKind, register_verb
from idvid.training.visuals import frame_grid

from ..backbones.test_backbone_contract import TINY_BACKBONES
from ..conftest import EXPERIMENTS, TINY_SCALE, compose_config

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_idvid(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; IDVID_CACHE stays as is so the demo data cache is reused."""
    env = dict(os.environ)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "idvid", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    result.stdout, result.stderr = ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)
    return result


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-3000:]}"  # noqa: E501


def events(tensorboard_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def table_rows(text: str) -> list[list[str]]:
    """Data rows of a rich table; a cell wrapped over several lines is joined back with spaces."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if cells[0] or not rows:
            rows.append(cells)
        else:  # continuation line of the previous row
            rows[-1] = [" ".join(part for part in (old, new) if part) for old, new in zip(rows[-1], cells)]
    return rows


# --------------------------------------------------------------------------- fit


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
@pytest.mark.parametrize("backbone", [tiny.config for tiny in TINY_BACKBONES])
def test_fit_plan_c_writes_config_checkpoints_tensorboard_and_samples(tmp_path, backbone):
    run_dir = tmp_path / "run"
    result = run_idvid(
        "fit",
        "experiment=plan_c",
        TINY_SCALE,
        f"backbone={backbone}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.checkpoint.every_n_train_steps=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)

    # The composed config is printed as a tree before training.
    assert result.stdout.lstrip().startswith("config")
    for text in ("experiment_name", "plan_c", "injectors", "consisid.local_face_cross_attention", "attn_ffn"):
        assert text in result.stdout, f"{text!r} missing from the printed config tree"

    # ... and saved, resolved, next to the run.
    saved_text = (run_dir / "config.yaml").read_text()
    assert "${" not in saved_text
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.experiment_name == "plan_c"
    assert saved.trainer.max_steps == 2 and saved.trainer.val_check_interval == 2
    assert saved.injectors.identity.site == "attn_ffn"
    assert Path(saved.trainer.default_root_dir) == run_dir

    # Checkpoints: the periodic one and last.ckpt, both after step 2.
    for name in ("last.ckpt", "step000002.ckpt"):
        checkpoint = run_dir / "checkpoints" / name
        assert checkpoint.is_file(), f"missing {checkpoint}"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2

    # TensorBoard: training and validation scalars, and the validation frame grid.
    accumulator = events(run_dir / "tensorboard")
    tags = accumulator.Tags()
    assert {"train/loss", "train/grad_norm", "lr-AdamW", "val/loss"} <= set(tags["scalars"]), tags["scalars"]
    losses = accumulator.Scalars("train/loss")
    assert [e.step for e in losses] == [0, 1]
    assert all(math.isfinite(e.value) for e in losses)
    assert len(accumulator.Scalars("val/loss")) == 1 and math.isfinite(accumulator.Scalars("val/loss")[0].value)
    assert all(math.isfinite(e.value) and e.value >= 0 for e in accumulator.Scalars("train/grad_norm"))

    clip_ids = [entry["id"] for entry in read_manifest(build_demo())][: compose_config([]).data.num_val_items]
    spectra = ["val/frequency/spectrum", "val/frequency/profile"]  # face-region frequency analysis
    assert sorted(tags["images"]) == sorted(
        ["val/samples", *spectra, *(f"val/video/{clip_id}" for clip_id in clip_ids)]
    )
    assert {"val/frequency/freq_low", "val/frequency/freq_high"} <= set(tags["scalars"])
    images = accumulator.Images("val/samples")
    assert [image.step for image in images] == [2]
    # frame_grid: one row per validation sample (2 x 64 px), reference + 9 frames per row (10 x 64 px).
    cfg = compose_config(["experiment=plan_c"])
    val_items, frames, height, width = cfg.data.num_val_items, cfg.data.num_frames, cfg.data.height, cfg.data.width
    expected = frame_grid(torch.zeros(val_items, frames, 3, height, width), torch.zeros(val_items, 3, 32, 32)).shape
    assert tuple(expected) == (3, 128, 640)
    assert (images[0].height, images[0].width) == (128, 640)
    decoded = Image.open(io.BytesIO(images[0].encoded_image_string))
    assert decoded.size == (640, 128) and decoded.mode == "RGB"

    # The animated validation videos (GIF image summaries: TensorBoard's video form), 9 frames each.
    video = Image.open(io.BytesIO(accumulator.Images(f"val/video/{clip_ids[0]}")[0].encoded_image_string))
    assert video.format == "GIF" and video.n_frames == frames and video.size == (width, height)

    # Generated validation videos: step and clip id in the name, one per validation item.
    samples = sorted((run_dir / "samples").glob("*.mp4"))
    assert [p.name for p in samples] == sorted(f"step000002_{clip_id}.mp4" for clip_id in clip_ids)
    for path in samples:
        assert read_mp4(path).shape == (frames, height, width, 3)
    assert Image.open(run_dir / "samples" / "step000002.png").size == (640, 128)  # the frame grid, as a file


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_multirun_sweeps_experiments_into_numbered_job_dirs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_idvid(
        "fit",
        "--multirun",
        "experiment=plan_a,plan_b",
        TINY_SCALE,
        f"hydra.sweep.dir={sweep_dir}",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "model.validation.sample=false",
        "callbacks.checkpoint.every_n_train_steps=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_plan_a", "1_plan_b"]
    # plan_a widens the input by the face latent channels and has no in-block injector; plan_b the reverse.
    expected = {"0_plan_a": ("plan_a", 32, False), "1_plan_b": ("plan_b", 16, True)}
    for job, (experiment, in_channels, has_identity) in expected.items():
        job_dir = sweep_dir / job
        assert OmegaConf.load(job_dir / "config.yaml").experiment_name == experiment
        checkpoint = job_dir / "checkpoints" / "last.ckpt"
        assert checkpoint.is_file(), f"missing {checkpoint}"
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert state["global_step"] == 1
        weights = state["state_dict"]
        assert weights["backbone.transformer.patch_embed.proj.weight"].shape[1] == in_channels
        assert any(k.startswith("plan.injectors.identity.") for k in weights) == has_identity
        # Validation ran (val/loss) but generated nothing: model.validation.sample=false.
        accumulator = events(job_dir / "tensorboard")
        assert "val/loss" in accumulator.Tags()["scalars"]
        assert accumulator.Tags()["images"] == []
        assert not (job_dir / "samples").exists()


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_unknown_experiment_fails_and_lists_the_available_ones(tmp_path):
    run_dir = tmp_path / "run"
    result = run_idvid("fit", "experiment=plan_zzz", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode != 0, explain(result)
    output = result.stdout + result.stderr
    assert "plan_zzz" in output
    for experiment in EXPERIMENTS:
        assert experiment in output, f"{experiment!r} not listed:\n{output}"
    assert "plan_c" in output and "consisid_preview" in output
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_trainer_argument_without_a_dedicated_setting_can_be_overridden(tmp_path):
    result = run_idvid(
        "fit", "experiment=plan_c", TINY_SCALE, "trainer.gradient_clip_val=1.0", "--cfg", "job", cwd=tmp_path
    )
    assert result.returncode == 0, explain(result)
    printed = OmegaConf.create(result.stdout)
    assert printed.experiment_name == "plan_c"
    assert printed.trainer.gradient_clip_val == 1.0
    assert printed.trainer.max_steps == 200  # untouched defaults stay
    assert "gradient_clip_val: 1.0" in result.stdout
    # --cfg job only composes: no run dir, no training.
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- plugins


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_plugins_lists_sites_and_every_registered_plugin(tmp_path):
    result = run_idvid("plugins", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    sites_text, _, plugins_text = result.stdout.partition("Registered plugins")
    sites_text, _, mapping_text = sites_text.partition("Sites in each backbone's block")
    plugins_text, _, packages_text = plugins_text.partition("Config packages")
    # Every site in every registered backbone, in the adapter's own words.
    mapping = {row[0]: row[1:] for row in table_rows(mapping_text)}
    assert set(mapping) == {site.value for site in Site}
    assert all(len(cells) == 2 and "-" not in cells for cells in mapping.values()), mapping
    assert "idvid_consisid.conf" in packages_text and "plan_c" in packages_text
    assert "Injection sites" in sites_text and plugins_text, result.stdout

    assert table_rows(sites_text) == [[site.value, SITE_DESCRIPTIONS[site]] for site in Site]
    assert [site.value for site in Site] == [
        "input_concat",
        "pre_attn",
        "attn_ffn",
        "post_attn",
        "text_tokens",
        "sequence_concat",
    ]

    rows = table_rows(plugins_text)
    assert all(len(row) == 6 for row in rows), rows
    listed = {(row[0], row[1]): row for row in rows}
    expected = {
        (kind.value, entry.name): entry
        for kind, registry in REGISTRIES.items()
        for entry in registry.entries()
        if not entry.obj.__module__.startswith("tests.")  # test-only registrations live in this process only
    }
    assert set(listed) == set(expected)
    assert len(rows) == len(expected)
    for key in [
        ("injector", "consisid.global_face_latent"),
        ("injector", "consisid.local_face_cross_attention"),
        ("conditioner", "consisid.identity_features"),
    ]:
        assert listed[key][5].startswith("idvid-consisid"), listed[key]
    assert listed[("injector", "consisid.global_face_latent")][2] == "input_concat"
    assert listed[("injector", "consisid.local_face_cross_attention")][2].startswith("attn_ffn")
    for key in [("backbone", "cogvideox"), ("loss", "weighted_mse"), ("conditioner", "reference_latents")]:
        assert listed[key][5] == "idvid (core)"


# ------------------------------------------------------------------------- verbs


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_unknown_verb_fails_naming_it(tmp_path):
    result = run_idvid("frobnicate", "experiment=plan_c", cwd=tmp_path)
    assert result.returncode != 0
    assert "Unknown verb 'frobnicate'" in result.stderr
    assert "fit" in result.stderr and "plugins" in result.stderr  # the usage follows


@pytest.mark.slow
def test_help_prints_usage(tmp_path):
    result = run_idvid("--help", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    assert result.stdout.startswith("usage: python -m idvid <verb>")
    verbs = re.findall(r"^  (\w+) ", result.stdout, flags=re.M)
    assert verbs[: len(VERBS)] == list(VERBS)  # the core's verbs first; installed plugins' verbs follow


# In-process (fast): the no-argument form.


def test_no_arguments_prints_usage(capsys):
    main([])
    assert capsys.readouterr().out.startswith("usage: python -m idvid <verb>")


@pytest.fixture
def plugin_verb(request):
    """Register a test verb the way a plugin does, and remove it afterwards."""
    calls = []

    def register(name):
        @register_verb(name, "ARGS: records its arguments")
        def verb_main(args):
            calls.append(args)

        request.addfinalizer(lambda: REGISTRIES[PluginKind.VERB]._entries.pop(name, None))
        return calls

    return register


def test_a_plugin_verb_runs_with_its_arguments_and_is_listed_in_the_usage(plugin_verb, capsys):
    calls = plugin_verb("frobnicate-test")
    main(["frobnicate-test", "a", "--b"])
    assert calls == [["a", "--b"]]
    main(["--help"])
    assert re.search(r"^  frobnicate-test +ARGS: records its arguments \(from ", capsys.readouterr().out, re.M)


def test_a_plugin_verb_may_not_take_a_core_verbs_name(plugin_verb, capsys):
    plugin_verb("sample")
    with pytest.raises(SystemExit):
        main(["frobnicate-missing"])  # any plugin verb lookup sees the clash
    captured = capsys.readouterr()
    assert "take the names of core verbs" in captured.err + captured.out
