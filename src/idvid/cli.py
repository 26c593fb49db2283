"""``python -m idvid <verb> [hydra overrides]``.

The verb is taken out of argv before Hydra parses the rest, so every Hydra
feature (``--multirun``, ``--cfg job``, ``hydra.run.dir=...``) works after it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

log = logging.getLogger("idvid")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "hydra_conf"

# Verbs that later issues implement; they are named here so users get a clear answer.
PLANNED_VERBS = {
    "sample": "reference image + prompt -> mp4",
    "preprocess": "raw videos -> cached training set",
    "evaluate": "identity and text metrics on generated videos",
    "convert": "official checkpoints in",
    "export": "kit checkpoints out",
}

USAGE = """usage: python -m idvid <verb> [overrides]

verbs:
  fit        train (Hydra overrides follow, e.g. experiment=plan_c trainer.max_steps=3)
  plugins    list registered plugins and the injection sites
""" + "".join(f"  {verb:<10} {what} (not implemented yet)\n" for verb, what in PLANNED_VERBS.items())


def _config_dir() -> Path:
    if not (CONFIG_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"idvid's configs were not found at {CONFIG_DIR}. Install idvid from its repository with "
            f"`pip install -e .` so that hydra_conf/ and experiments/ stay next to the code."
        )
    return CONFIG_DIR


def _run_hydra(task: Callable[[DictConfig], object], overrides: list[str]) -> None:
    wrapped = hydra.main(config_path=str(_config_dir()), config_name="config", version_base="1.3")(task)
    argv = sys.argv
    sys.argv = [argv[0], *overrides]
    try:
        wrapped()
    finally:
        sys.argv = argv


def _fit_task(cfg: DictConfig) -> float | None:
    # Imported here so that Hydra's own answers (--help, --cfg, a bad override) come without
    # loading torch and Lightning first.
    from idvid.fit import fit

    return fit(cfg)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verb, rest = args[0], args[1:]
    if verb == "fit":
        _run_hydra(_fit_task, rest)
    elif verb == "plugins":
        from idvid.plugins_listing import print_plugins

        print_plugins()
    elif verb in PLANNED_VERBS:
        sys.exit(f"`idvid {verb}` ({PLANNED_VERBS[verb]}) is not implemented yet. Available now: fit, plugins.")
    else:
        sys.exit(f"Unknown verb {verb!r}.\n\n{USAGE}")
