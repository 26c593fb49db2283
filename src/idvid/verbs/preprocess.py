"""Raw videos + captions -> a filtered training set in the manifest format (`python -m idvid preprocess`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from idvid.errors import ConfigError
from idvid.faces import face_analyzer_from_config
from idvid.preprocess import (
    ClipSettings,
    FilterSettings,
    MaskSettings,
    Preprocessor,
    PreprocessSettings,
    TrackingSettings,
)
from idvid.registry import REGISTRIES, PluginKind
from idvid.verbs.argument_types import check_setting_types


def settings_from_config(cfg: DictConfig) -> PreprocessSettings:
    """PreprocessSettings from the composed `preprocess.yaml`; a missing value is an error naming it."""
    check_required(cfg)
    if not cfg.data.get("raw"):
        raise ConfigError(
            "preprocess needs data.raw=<folder of videos>",
            "or, for a data set annotated by another tool, data.importer=<name> data.source=<its annotations> "
            "(`python -m idvid plugins` lists the dataset importers)",
        )
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_setting_types(plain, {"tracking": TrackingSettings, "filters": FilterSettings, "clip": ClipSettings})
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
        overwrite=bool(plain.get("overwrite", False)),
        audio_mel_bins=int(plain.get("audio_mel_bins", 80)),
        syncnet_weights=Path(plain["syncnet_weights"]).expanduser() if plain.get("syncnet_weights") else None,
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
    """The `preprocess` verb: run the pipeline on data.raw, or a dataset importer on data.source; returns the summary.

    A dataset importer (plugin kind ``dataset_importer``) is a callable
    ``importer(source, out, analyzer, face, min_frames) -> summary`` that turns a data set annotated by
    another tool into the manifest format, with the face backend filling in what it lacks.
    """
    check_required(cfg)
    importer_name, source = cfg.data.get("importer"), cfg.data.get("source")
    if importer_name is None and source is None:
        return Preprocessor(settings_from_config(cfg)).run()
    if cfg.data.get("raw"):
        raise ConfigError(
            "give either data.raw (videos to preprocess) or data.importer + data.source (annotations to import), "
            "not both"
        )
    if not importer_name or not source:
        raise ConfigError(
            f"data.importer={importer_name} data.source={source}: importing needs both",
            "e.g. data.importer=<name> data.source=<path>; `python -m idvid plugins` lists the dataset importers",
        )
    importer = REGISTRIES[PluginKind.DATASET_IMPORTER].get(str(importer_name))
    face = OmegaConf.to_container(cfg.face, resolve=True, throw_on_missing=True)
    face = {"name": face["name"], "options": face.get("options") or {}}
    span = (int(cfg.clip.num_frames) - 1) * int(cfg.clip.frame_stride) + 1
    return importer(str(source), cfg.data.out, face_analyzer_from_config(face), face, min_frames=span)
