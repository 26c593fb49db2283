"""The ``evaluate`` verb: ``python -m idvid evaluate videos=DIR refs=DIR prompts=FILE out=DIR [metrics=[...]]``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from idvid.errors import ConfigError
from idvid.evaluation.evaluate import EvaluationResult, evaluate
from idvid.evaluation.report import markdown_table


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


def main(cfg: DictConfig) -> EvaluationResult:
    missing = [key for key in REQUIRED if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(
            f"evaluate needs {', '.join(f'{key}=' for key in missing)}: python -m idvid evaluate videos=DIR refs=DIR "
            f"prompts=FILE out=DIR (NAME.mp4 pairs with refs/NAME.png|jpg and the line NAME<TAB>prompt)"
        )
    result = evaluate(cfg)
    print(summary(result, Path(cfg.out)))
    return result
