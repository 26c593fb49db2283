"""Files written atomically: a reader sees the old complete file or the new complete one, never a part.

Everything that a later run trusts (preprocess records and annotations, feature-cache entries,
ablation markers, consolidated checkpoints) is written through here: to a temporary name in the
same folder, then renamed, so a crash or a kill leaves at most a ``.tmp-*`` file nothing reads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary name in the same folder, then rename it to `path`.

    The rename is atomic, so `path` is either the old complete file or the new complete one;
    a crash leaves at most a `.tmp-*` file that nothing reads.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # the pattern LEFTOVER_NAME recognises
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


LEFTOVER_NAME = re.compile(r"\.tmp-(?P<pid>\d+)-(?P<name>.+)")


def _writer_alive(pid: int) -> bool:
    """Whether the process that named a temporary file still runs (then the file is being written)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(folder: Path, names: set[str]) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` for the final names `names`; returns them.

    Only names the caller itself writes are given, and a file whose writer (the pid in its name) still
    runs is kept: two processes writing the same output folder never delete each other's files.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = LEFTOVER_NAME.fullmatch(entry.name)
        if match and match["name"] in names and entry.is_file() and not _writer_alive(int(match["pid"])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"))


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(handle, **arrays)

    write_atomic(path, write)


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None when it is missing or unreadable (then it is redone)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
