"""The ``evaluate`` verb: ``python -m idvid evaluate videos=DIR refs=DIR prompts=FILE out=DIR [metrics=[...]]``."""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from idvid.errors import ConfigError
from idvid.evaluation.evaluate import EvaluationResult, evaluate
from idvid.evaluation.report import markdown_table
from idvid.output_paths import OutputExistsError


def summary(result: EvaluationResult, out: Path) -> str:
    """The text the verb prints: the aggregate table, unavailable metrics with their paths, skipped videos."""
    text = markdown_table(
        ["metric", "value", "videos"], [[r["metric"], r["value"], r["videos"]] for r in result.aggregate]
    )
    for name, reason in result.unavailable.items():
        text += f"unavailable: {name}: {reason}\n"
    for name, reason in result.skipped:
        text += f"skipped: {name}: {reason}\n"
    return text + f"wrote {out}/per_video.csv, {out}/aggregate.md, {out}/aggregate.csv\n"


REQUIRED = ("videos", "refs", "prompts", "out")
# What an evaluation writes into out= (Hydra's .hydra/ and log sit there too; they are no results).
RESULTS = ("per_video.csv", "aggregate.md", "aggregate.csv", "skipped.csv", "frequency")


def clear_earlier_results(out: Path, overwrite: bool) -> None:
    """Refuse an out= that holds an earlier evaluation unless overwrite=true; then remove it.

    Removing it first keeps a new set from sitting beside per-video spectra of videos it no longer has.
    """
    earlier = [name for name in RESULTS if (out / name).exists()]
    if earlier and not overwrite:
        raise OutputExistsError(
            f"out={out} holds an earlier evaluation ({', '.join(earlier)})",
            "pass overwrite=true to replace it, or choose another out=",
        )
    for name in earlier:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def main(cfg: DictConfig) -> EvaluationResult:
    missing = [key for key in REQUIRED if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(
            f"evaluate needs {', '.join(f'{key}=' for key in missing)}: python -m idvid evaluate videos=DIR refs=DIR "
            f"prompts=FILE out=DIR (NAME.mp4 pairs with refs/NAME.png|jpg and the line NAME<TAB>prompt)"
        )
    clear_earlier_results(Path(cfg.out), bool(cfg.get("overwrite", False)))
    result = evaluate(cfg)
    print(summary(result, Path(cfg.out)))
    return result
