"""Raw videos + captions -> a filtered training set in the manifest format (`python -m idvid preprocess`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from idvid.preprocess.annotate import ClipSettings
from idvid.preprocess.filters import FilterSettings
from idvid.preprocess.pipeline import Preprocessor, PreprocessSettings
from idvid.preprocess.tracking import TrackingSettings

__all__ = [
    "ClipSettings",
    "FilterSettings",
    "PreprocessSettings",
    "Preprocessor",
    "TrackingSettings",
    "settings_from_config",
]


def settings_from_config(cfg: DictConfig) -> PreprocessSettings:
    """PreprocessSettings from the composed `preprocess.yaml`; a missing value (`???`) is an error naming it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"preprocess needs {', '.join(missing)}: python -m idvid preprocess data.raw=<folder of videos> "
            "data.out=<output folder> (with face=insightface also face.options.models_dir=<the antelopev2 folder>)"
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    rank = plain.get("rank")
    world_size = plain.get("world_size")
    return PreprocessSettings(
        raw=Path(plain["data"]["raw"]).expanduser(),
        out=Path(plain["data"]["out"]).expanduser(),
        captions=Path(plain["data"]["captions"]).expanduser() if plain["data"].get("captions") else None,
        face={"name": plain["face"]["name"], "options": plain["face"].get("options") or {}},
        detect_every=int(plain["detect"]["every"]),
        tracking=TrackingSettings(**plain["tracking"]),
        filters=FilterSettings(**plain["filters"]),
        clip=ClipSettings(**plain["clip"]),
        align_size=int(plain["align_size"]),
        rank=int(rank if rank is not None else os.environ.get("RANK", 0)),
        world_size=int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", 1)),
    )


def preprocess(cfg: DictConfig) -> dict[str, Any]:
    """The `preprocess` verb: build the settings and run; returns the summary."""
    return Preprocessor(settings_from_config(cfg)).run()
