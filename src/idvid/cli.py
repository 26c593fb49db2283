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

from idvid.resolvers import register_resolvers

log = logging.getLogger("idvid")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "hydra_conf"
register_resolvers()  # before any config under CONFIG_DIR is composed

VERBS = {
    "fit": "train (Hydra overrides follow, e.g. experiment=plan_c trainer.max_steps=3)",
    "preprocess": "data.raw=DIR data.out=DIR [face=dlib]: raw videos + captions -> training set",
    "plugins": "list registered plugins and the injection sites",
    "sample": "CKPT --image ref.jpg --prompt TEXT --out video.mp4: generate a video",
    "convert": "--from FORMAT PATH --out CKPT [overrides]: a foreign checkpoint -> kit checkpoint",
    "export": "CKPT --to FORMAT OUT: kit checkpoint -> foreign layout (formats: see `plugins`)",
    "consolidate": "DEEPSPEED_CKPT_DIR OUT.ckpt: ZeRO shards of every rank -> one kit checkpoint",
    "evaluate": "videos=DIR refs=DIR prompts=FILE out=DIR: identity, text, FID and frequency metrics",
    "ablate": "fit, sample and evaluate every plan; writes the ablation table (ablation.md)",
}

USAGE = "usage: python -m idvid <verb> [overrides]\n\nverbs:\n" + "".join(
    f"  {verb:<10} {what}\n" for verb, what in VERBS.items()
)


def _config_dir() -> Path:
    if not (CONFIG_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"idvid's configs were not found at {CONFIG_DIR}. Install idvid from its repository with "
            f"`pip install -e .` so that hydra_conf/ and experiments/ stay next to the code."
        )
    return CONFIG_DIR


def _run_hydra(
    task: Callable[[DictConfig], object], verb: str, overrides: list[str], config_name: str = "config"
) -> None:
    """Run `task` on the config `hydra_conf/<config_name>.yaml` composed with `overrides`."""
    argv = sys.argv

    def run(cfg: DictConfig) -> object:
        # Hydra has parsed the overrides; put the verb back, because launchers that re-run this
        # command in new processes (Lightning's DDP) rebuild their command line from sys.argv.
        sys.argv = [argv[0], verb, *overrides]
        return task(cfg)

    wrapped = hydra.main(config_path=str(_config_dir()), config_name=config_name, version_base="1.3")(run)
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


def _preprocess_task(cfg: DictConfig) -> dict:
    from idvid.preprocess import preprocess

    return preprocess(cfg)


def _evaluate_task(cfg: DictConfig) -> object:
    from idvid.evaluation.evaluate import main as evaluate_main

    return evaluate_main(cfg)


def _ablate_task(cfg: DictConfig) -> object:
    from idvid.evaluation.ablate import main as ablate_main

    return ablate_main(cfg)


def _run_interop(verb: str, args: list[str]) -> None:
    import argparse

    from idvid import interop

    parser = argparse.ArgumentParser(prog=f"python -m idvid {verb}")
    if verb == "convert":
        parser.add_argument("--from", dest="format", required=True, help="source format, e.g. diffusers-consisid")
        parser.add_argument("source", help="the foreign checkpoint (folder or file)")
        parser.add_argument("--out", required=True, help="kit checkpoint to write (.ckpt)")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides for the experiment config")
        options = parser.parse_args(args)
        path, experiment = interop.convert(options.format, options.source, options.out, options.overrides)
        print(f"wrote {path}\nfine-tune it: python -m idvid fit experiment={experiment} init_from={path}")
    elif verb == "consolidate":
        parser.add_argument("folder", help="a DeepSpeed checkpoint folder, e.g. outputs/<run>/checkpoints/last.ckpt")
        parser.add_argument("out", help="kit checkpoint file to write (.ckpt)")
        options = parser.parse_args(args)
        print(f"wrote {interop.consolidate(options.folder, options.out)}")
    else:
        parser.add_argument("checkpoint", help="a kit checkpoint (.ckpt) from fit or convert, or a DeepSpeed folder")
        parser.add_argument(
            "--to", dest="format", required=True, help="target format, e.g. diffusers-consisid or idvid"
        )
        parser.add_argument("out", help="folder to write")
        parser.add_argument("--ema", action="store_true", help="export the EMA of the weights")
        options = parser.parse_args(args)
        print(f"wrote {interop.export(options.checkpoint, options.format, options.out, ema=options.ema)}")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verb, rest = args[0], args[1:]
    if verb == "fit":
        _run_hydra(_fit_task, verb, rest)
    elif verb == "preprocess":
        _run_hydra(_preprocess_task, verb, rest, config_name="preprocess")
    elif verb == "evaluate":
        _run_hydra(_evaluate_task, verb, rest, config_name="evaluate")
    elif verb == "ablate":
        _run_hydra(_ablate_task, verb, rest, config_name="ablate")
    elif verb == "plugins":
        from idvid.plugins_listing import print_plugins

        print_plugins()
    elif verb == "sample":
        from idvid.sample import main as sample_main

        sample_main(rest)
    elif verb in ("convert", "export", "consolidate"):
        _run_interop(verb, rest)
    else:
        sys.exit(f"Unknown verb {verb!r}.\n\n{USAGE}")
