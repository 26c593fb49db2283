"""Where verbs write: an existing output is replaced only when the user asked for it (``--overwrite``).

Every verb that writes a named output (``convert --out``, ``export OUT``, ``consolidate OUT``,
``sample --out``, ``evaluate out=``) checks it here *before* any slow work, so a typo never
replaces a checkpoint or merges a new export into an old one. Verbs that resume into their own
folder (``preprocess``, ``ablate``, ``fit``) do not refuse it: re-running them there is the point;
they refuse only what they would write over without resuming it (``preprocess``: a data set it did
not write; ``fit``: a run dir's checkpoints when no ``ckpt_path`` is given).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from idvid.errors import UserError


class OutputExistsError(UserError, FileExistsError):
    """An output the verb would replace or merge into, without ``--overwrite``."""


def check_output_file(path: str | Path, overwrite: bool, option: str = "--overwrite") -> Path:
    """The file `path` to write; refuses a folder, and an existing file unless `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; this verb writes one file", "give a file path, e.g. out.ckpt")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists", f"pass {option} to replace it, or choose another path")
    return path


def check_output_folder(
    path: str | Path, overwrite: bool, option: str = "--overwrite", protected: tuple[Path, ...] = ()
) -> Path:
    """The folder `path` to write; refuses a non-empty folder (or a file there) unless `overwrite`.

    protected: paths the replacement must not delete (the checkpoint being exported); the current
    folder and the home folder are always protected, so ``--overwrite`` never removes them.
    """
    path = Path(path)
    if path.is_file() and not overwrite:
        raise OutputExistsError(f"{path} is an existing file", f"pass {option} to replace it, or choose another path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{path} is not empty ({', '.join(sorted(p.name for p in path.iterdir())[:5])}, ...)",
                f"pass {option} to replace its contents with the new output, or choose an empty or new folder",
            )
        target = path.resolve()
        for keep in (Path.cwd(), Path.home(), *protected):
            keep = Path(keep).resolve()
            if keep == target or target in keep.parents:
                raise OutputExistsError(
                    f"{path} holds {keep}; {option} would delete it", "choose a new folder for the output"
                )
    return path


def replace_folder(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a new sibling folder, then put it in the place of `path` (a folder or file, if any).

    A failed write leaves `path` as it was; only the swap at the end touches it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    old = path.with_name(f".tmp-{os.getpid()}-old-{path.name}")
    for leftover in (tmp, old):
        _remove(leftover)
    try:
        tmp.mkdir()
        write(tmp)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(old)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
