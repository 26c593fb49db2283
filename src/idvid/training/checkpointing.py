"""Checkpoints that are never half-written: a process killed while saving leaves the previous one intact.

Every checkpoint (including ``last.ckpt``, and the folders DeepSpeed writes) is first written
completely under ``<name>.partial``, then put in place with a rename. A file is replaced in one
atomic ``os.replace``. A folder cannot be, so the old one is first renamed to
``<name>.previous``: a kill between the two renames leaves a complete ``.previous``, which
``resolve_checkpoint`` falls back to. ``.partial`` paths are never read.

A checkpoint cut short anyway (a copy killed half-way, a full disk) is refused by
``check_checkpoint_file`` with its path and the previous complete checkpoint of its folder.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from idvid.errors import CorruptFileError

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


def is_complete_checkpoint_file(path: str | Path) -> bool:
    """Whether ``path`` is a whole torch zip archive; cheap: reads the archive's index at its end, not its data."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def previous_complete_checkpoint(path: str | Path) -> Path | None:
    """The newest other complete checkpoint file in ``path``'s folder (``.partial`` ones excluded), or None."""
    path = Path(path)
    candidates = [
        other
        for other in path.parent.glob("*.ckpt*")
        if other.is_file() and other.resolve() != path.resolve() and not other.name.endswith(PARTIAL_SUFFIX)
    ]
    for other in sorted(candidates, key=lambda p: (p.stat().st_mtime, p.name), reverse=True):
        if is_complete_checkpoint_file(other):
            return other
    return None


def corrupt_checkpoint_error(path: str | Path, reason: str, option: str | None = None) -> CorruptFileError:
    """The error for an unreadable checkpoint: its path, why, and the previous complete one in its folder."""
    path = Path(path)
    previous = previous_complete_checkpoint(path)
    if previous is None:
        fix = f"No other complete checkpoint is in {path.parent}; copy the file again or re-run the training."
    else:
        use = f": use {option}={previous}" if option else "; give that one instead"
        fix = f"The previous complete checkpoint in that folder is {previous}{use}"
    return CorruptFileError(
        f"Checkpoint {path} is truncated or corrupt ({reason}); it was probably cut short while being copied "
        f"or written (a full disk, a killed copy).",
        fix,
    )


def check_checkpoint_file(path: str | Path, option: str | None = None) -> None:
    """Raise CorruptFileError when ``path`` is not a complete checkpoint file (``option``: the setting naming it)."""
    if not is_complete_checkpoint_file(path):
        raise corrupt_checkpoint_error(path, "not a complete torch zip archive", option)


@contextlib.contextmanager
def reading_checkpoint(path: str | Path, option: str | None = None) -> Iterator[None]:
    """Check ``path`` is complete, then turn torch's errors for a damaged archive inside into CorruptFileError.

    The check catches a truncated file at once; damage in the middle only shows while torch reads it.
    """
    check_checkpoint_file(path, option)
    try:
        yield
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        message = str(error)
        damaged = not isinstance(error, RuntimeError) or "PytorchStreamReader" in message or "zip" in message
        if not damaged or "Weights only load failed" in message:
            raise
        raise corrupt_checkpoint_error(
            path, message.splitlines()[0] if message else type(error).__name__, option
        ) from error
