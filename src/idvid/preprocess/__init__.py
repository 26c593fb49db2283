"""Raw videos + captions -> a filtered training set in the manifest format (`python -m idvid preprocess`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from idvid.preprocess.annotate import ClipSettings, MaskSettings
from idvid.preprocess.filters import FilterSettings
from idvid.preprocess.pipeline import Preprocessor, PreprocessSettings, build_analyzer
from idvid.preprocess.tracking import TrackingSettings

__all__ = [
    "ClipSettings",
    "FilterSettings",
    "MaskSettings",
    "PreprocessSettings",
    "Preprocessor",
    "TrackingSettings",
    "mask_settings",
    "settings_from_config",
]


def settings_from_config(cfg: DictConfig) -> PreprocessSettings:
    """PreprocessSettings from the composed `preprocess.yaml`; a missing value is an error naming it."""
    check_required(cfg)
    if not cfg.data.get("raw"):
        raise ValueError(
            "preprocess needs data.raw=<folder of videos> (or data.consisid=<ConsisID's total_train_data.txt>)"
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
        mask=mask_settings(plain.get("mask") or {}),
        rank=int(rank if rank is not None else os.environ.get("RANK", 0)),
        world_size=int(world_size if world_size is not None else os.environ.get("WORLD_SIZE", 1)),
    )


def mask_settings(mask: dict[str, Any]) -> MaskSettings:
    """MaskSettings from the config's `mask` group (a null parser_weights means the landmark fallback)."""
    weights = mask.get("parser_weights")
    return MaskSettings(
        parser_weights=Path(weights).expanduser() if weights else None,
        face_classes=tuple(int(c) for c in mask.get("face_classes") or MaskSettings.face_classes),
        device=str(mask.get("device") or "cpu"),
    )


def check_required(cfg: DictConfig) -> None:
    """Raise ValueError naming every value left `???` in the config."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"preprocess needs {', '.join(missing)}: python -m idvid preprocess data.raw=<folder of videos> "
            "data.out=<output folder> (with face=insightface also face.options.models_dir=<the antelopev2 folder>)"
        )


def preprocess(cfg: DictConfig) -> dict[str, Any]:
    """The `preprocess` verb: run the pipeline on data.raw, or import data.consisid; returns the summary."""
    check_required(cfg)
    if cfg.data.get("consisid") and cfg.data.get("raw"):
        raise ValueError(
            "give either data.raw (videos to preprocess) or data.consisid (annotations to import), not both"
        )
    if cfg.data.get("consisid"):
        from idvid.preprocess.consisid_import import import_consisid

        face = OmegaConf.to_container(cfg.face, resolve=True, throw_on_missing=True)
        face = {"name": face["name"], "options": face.get("options") or {}}
        analyzer = build_analyzer(face)
        span = (int(cfg.clip.num_frames) - 1) * int(cfg.clip.frame_stride) + 1
        return import_consisid(cfg.data.consisid, cfg.data.out, analyzer, face, min_frames=span)
    return Preprocessor(settings_from_config(cfg)).run()
