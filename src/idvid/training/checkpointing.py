"""Checkpoints that are never half-written: a process killed while saving leaves the previous one intact.

Every checkpoint (including ``last.ckpt``, and the folders DeepSpeed writes) is first written
completely under ``<name>.partial``, then put in place with a rename. A file is replaced in one
atomic ``os.replace``. A folder cannot be, so the old one is first renamed to
``<name>.previous``: a kill between the two renames leaves a complete ``.previous``, which
``resolve_checkpoint`` falls back to. ``.partial`` paths are never read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

PARTIAL_SUFFIX = ".partial"
PREVIOUS_SUFFIX = ".previous"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def put_in_place(written: str | Path, target: str | Path) -> None:
    """Move the complete checkpoint ``written`` (file or folder) to ``target``, replacing what was there."""
    written, target = Path(written), Path(target)
    if written.is_file() and not target.is_dir():
        os.replace(written, target)  # atomic on one file system, and both live in the same folder
        return
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    _remove(previous)
    if target.exists():
        os.replace(target, previous)
    os.replace(written, target)
    _remove(previous)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """``path`` if it exists, else the complete ``.previous`` a kill mid-replace left behind, else None."""
    path = Path(path)
    if path.exists():
        return path
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    return previous if previous.exists() else None


def save_checkpoint_atomically(trainer: L.Trainer, path: str | Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` (every rank writes its part) into ``.partial``, then rank 0 renames."""
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if trainer.is_global_zero:
        _remove(partial)  # left by a run killed while writing
    trainer.strategy.barrier("idvid.checkpoint.clean")
    trainer.save_checkpoint(partial, weights_only)  # ends with a barrier: every rank has written
    if trainer.is_global_zero:
        put_in_place(partial, path)
    trainer.strategy.barrier("idvid.checkpoint.in_place")


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose every write (top-k and ``last``) goes through ``.partial`` + rename.

    A finished run also saves its final step, whatever ``every_n_train_steps`` is: Lightning's own
    ``on_train_end`` only writes ``last`` when nothing was saved yet, so a 7-step run checkpointed
    every 5 steps would leave step 5 as ``last`` and ``sample``/``export``/``init_from`` would read it.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # also: this step is already saved
            return
        monitor_candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        # What ModelCheckpoint._save_checkpoint does after writing.
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
