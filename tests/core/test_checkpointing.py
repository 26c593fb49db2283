"""A process killed while writing a checkpoint never leaves a corrupt one behind; resume finds the last complete one."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from idvid.training.checkpointing import PARTIAL_SUFFIX, PREVIOUS_SUFFIX, put_in_place, resolve_checkpoint

from .test_training import run_fit

COMMON = [
    "experiment=plan_a",
    "model.validation.sample=false",
    "trainer.val_check_interval=100",
    "callbacks.checkpoint.every_n_train_steps=2",
]


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, so no `except Exception` catches it)."""


def test_a_file_replaces_the_old_one_in_one_rename(tmp_path):
    target, written = tmp_path / "last.ckpt", tmp_path / f"last.ckpt{PARTIAL_SUFFIX}"
    target.write_text("old")
    written.write_text("new")
    put_in_place(written, target)
    assert target.read_text() == "new" and not written.exists()


def test_a_folder_killed_between_the_renames_leaves_the_complete_previous_one(tmp_path, monkeypatch):
    target, written = tmp_path / "last.ckpt", tmp_path / f"last.ckpt{PARTIAL_SUFFIX}"
    for folder, content in ((target, "old"), (written, "new")):
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "shard.pt").write_text(content)

    import idvid.training.checkpointing as checkpointing

    real_replace, calls = checkpointing.os.replace, []

    def replace_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # after moving the old folder aside, before moving the new one in
            raise SimulatedKill
        real_replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "replace", replace_then_die)
    with pytest.raises(SimulatedKill):
        put_in_place(written, target)
    monkeypatch.setattr(checkpointing.os, "replace", real_replace)

    found = resolve_checkpoint(target)
    assert found == tmp_path / f"last.ckpt{PREVIOUS_SUFFIX}"
    assert (found / "checkpoint" / "shard.pt").read_text() == "old"
    put_in_place(written, target)  # the next save completes normally and cleans up
    assert (target / "checkpoint" / "shard.pt").read_text() == "new"
    assert resolve_checkpoint(target) == target and not found.exists()


@pytest.mark.slow
def test_killed_while_writing_last_then_resume_last(tmp_path, monkeypatch):
    real_save = TorchCheckpointIO.save_checkpoint

    def dies_half_way_through_last_at_step_4(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] == 4 and str(path).startswith(str(tmp_path / "checkpoints" / "last.ckpt")):
            with open(path, "wb") as file:  # a plain, non-atomic writer, killed half way
                file.write(b"\x80\x02 half a checkpoint")
            raise SimulatedKill
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_half_way_through_last_at_step_4)
    with pytest.raises(SimulatedKill):
        run_fit(tmp_path, *COMMON, "trainer.max_steps=4")
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", real_save)

    checkpoints = tmp_path / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2  # the killed step-4 write never touched it

    loss = run_fit(tmp_path, *COMMON, "trainer.max_steps=4", "ckpt_path=last")
    assert loss is not None
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step000002.ckpt", "step000004.ckpt"]


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_a_finished_run_leaves_its_final_step_in_last_whatever_the_intervals(tmp_path):
    # 7 steps, validation and checkpoints every 5: Lightning alone leaves step 5 in last.ckpt.
    run_fit(
        tmp_path,
        "experiment=plan_a",
        "model.validation.sample=false",
        "trainer.max_steps=7",
        "trainer.val_check_interval=5",
        "callbacks.checkpoint.every_n_train_steps=5",
    )
    checkpoints = tmp_path / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 7
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step000005.ckpt", "step000007.ckpt"]
