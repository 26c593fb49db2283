"""Verbs never replace or merge into an existing output unless asked (``--overwrite`` / ``overwrite=true``)."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
from diffusers import CogVideoXTransformer3DModel

from idvid.cli import main
from idvid.interop import save_module
from tests.conftest import TINY_SCALE, compose_config


def refused(capsys, argv: list[str]) -> str:
    """Run the verb, expect the kit's one-message user error (exit status 1), return its text."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


@pytest.fixture(scope="module")
def plan_a_checkpoint(tmp_path_factory):
    L.seed_everything(0)
    module = hydra.utils.instantiate(compose_config(["experiment=plan_a"]).model)
    return save_module(module, tmp_path_factory.mktemp("ckpt") / "plan_a.ckpt")


@pytest.mark.needs_plugin("idvid_consisid")
def test_convert_refuses_to_replace_an_existing_checkpoint(tmp_path, capsys):
    existing = tmp_path / "consisid.ckpt"
    existing.write_bytes(b"an earlier checkpoint")
    # Refused before the source is read: the source does not even need to exist.
    error = refused(capsys, ["convert", "--from", "diffusers-consisid", str(tmp_path / "src"), "--out", str(existing)])
    assert f"{existing} already exists" in error and "--overwrite" in error
    assert existing.read_bytes() == b"an earlier checkpoint"
    error = refused(capsys, ["convert", "--from", "diffusers-consisid", str(tmp_path / "src"), "--out", str(tmp_path)])
    assert "is a folder" in error


@pytest.mark.needs_plugin("idvid_consisid")
def test_export_refuses_a_non_empty_folder_and_replaces_it_whole_with_overwrite(plan_a_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "config.json").write_text('{"_class_name": "ConsisIDTransformer3DModel"}')  # an older export
    (out / "diffusion_pytorch_model.safetensors").write_bytes(b"old weights")
    error = refused(capsys, ["export", str(plan_a_checkpoint), "--to", "idvid", str(out)])
    assert f"{out} is not empty (config.json, diffusion_pytorch_model.safetensors" in error and "--overwrite" in error
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]

    main(["export", str(plan_a_checkpoint), "--to", "idvid", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["idvid_model.json", "injectors", "transformer"]  # nothing old
    assert CogVideoXTransformer3DModel.from_pretrained(out / "transformer").config.in_channels == 32
    assert not list(tmp_path.glob(".tmp-*"))
    # A new or empty folder needs no flag.
    (tmp_path / "empty").mkdir()
    main(["export", str(plan_a_checkpoint), "--to", "idvid", str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "transformer").is_dir()


@pytest.mark.needs_plugin("idvid_consisid")
def test_export_overwrite_never_deletes_the_checkpoint_or_the_current_folder(plan_a_checkpoint, capsys, monkeypatch):
    folder = plan_a_checkpoint.parent
    error = refused(capsys, ["export", str(plan_a_checkpoint), "--to", "idvid", str(folder), "--overwrite"])
    assert f"holds {plan_a_checkpoint}; --overwrite would delete it" in error
    monkeypatch.chdir(folder)
    error = refused(capsys, ["export", str(plan_a_checkpoint), "--to", "idvid", ".", "--overwrite"])
    assert "--overwrite would delete it" in error
    assert plan_a_checkpoint.is_file()


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_failed_export_leaves_the_old_folder_as_it_was(plan_a_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    # plan_a has no diffusers-consisid form: the writer raises after the folder was set up.
    refused(capsys, ["export", str(plan_a_checkpoint), "--to", "diffusers-consisid", str(out), "--overwrite"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".tmp-*"))


def test_sample_and_consolidate_refuse_an_existing_output(tmp_path, capsys):
    video = tmp_path / "video.mp4"
    video.write_bytes(b"an earlier video")
    # Refused before the checkpoint is loaded (it does not exist here).
    argv = ["sample", str(tmp_path / "x.ckpt"), "--image", "ref.jpg", "--prompt", "a face", "--out", str(video)]
    assert f"{video} already exists" in refused(capsys, argv)
    consolidated = tmp_path / "plan.ckpt"
    consolidated.write_bytes(b"an earlier checkpoint")
    assert f"{consolidated} already exists" in refused(capsys, ["consolidate", str(tmp_path / "ds"), str(consolidated)])
    assert video.read_bytes() == b"an earlier video" and consolidated.read_bytes() == b"an earlier checkpoint"


def test_evaluate_refuses_an_out_with_an_earlier_evaluation(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "aggregate.md").write_text("| an earlier result |")
    argv = ["evaluate", f"videos={tmp_path}", f"refs={tmp_path}", f"prompts={tmp_path / 'p.tsv'}", f"out={out}"]
    error = refused(capsys, argv)
    assert f"out={out} holds an earlier evaluation (aggregate.md)" in error and "overwrite=true" in error
    assert (out / "aggregate.md").read_text() == "| an earlier result |"


@pytest.mark.needs_plugin("idvid_consisid")
def test_fit_into_a_run_dir_with_checkpoints_resumes_or_refuses(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the earlier run's weights")
    (run_dir / "config.yaml").write_text("the earlier run's config\n")
    # Without ckpt_path a new run would start from scratch and write its checkpoints over these.
    error = refused(capsys, ["fit", "experiment=plan_c", TINY_SCALE, f"hydra.run.dir={run_dir}"])
    assert f"hydra.run.dir={run_dir} holds checkpoints of an earlier run (last.ckpt)" in error
    assert "ckpt_path=last" in error and "overwrite=true" in error
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"the earlier run's weights"
    assert (run_dir / "config.yaml").read_text() == "the earlier run's config\n"
