"""Score generated videos against their reference photos and prompts (the ``evaluate`` verb: ``idvid.verbs.evaluate``).

``python -m idvid evaluate videos=DIR refs=DIR prompts=FILE out=DIR [metrics=[...]]`` writes
``per_video.csv``, ``aggregate.md`` / ``aggregate.csv``, ``skipped.csv`` and the frequency
pictures to ``out`` (and TensorBoard scalars when ``tensorboard_dir`` is set). ``targets=DIR`` gives
ground-truth videos ``NAME.mp4`` for the metrics that compare with one (LPIPS, FVD). A metric whose
model is not on disk is reported unavailable with the path it expected; the others still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from idvid.data.video_io import read_mp4
from idvid.evaluation.identity import evenly_sampled_indices, largest_faces, reference_face
from idvid.evaluation.inputs import pair_inputs
from idvid.evaluation.metrics import VideoContext, build_detector, build_group, check_metric_names
from idvid.evaluation.report import log_tensorboard, write_reports

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What ``evaluate`` computed: per-video rows, set-level numbers, the aggregate, what was left out."""

    videos: list[dict[str, Any]]
    set_level: dict[str, Any]
    aggregate: list[dict[str, Any]]
    unavailable: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise ValueError(f"cannot read the image {path}; give a .png or .jpg")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_target(targets: str | None, name: str) -> np.ndarray | None:
    """The ground-truth video ``<targets>/NAME.mp4`` (for LPIPS and FVD), or None without one."""
    if not targets:
        return None
    path = Path(targets) / f"{name}.mp4"
    return read_mp4(path) if path.is_file() else None


def evaluate(cfg: Mapping[str, Any] | DictConfig) -> EvaluationResult:
    """Run the configured metrics (see ``hydra_conf/evaluate.yaml``) and write the reports."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    # Absolute model paths, so that "unavailable" messages name exactly where the file was looked for.
    cfg["models"] = {k: str(Path(v).expanduser().absolute()) for k, v in cfg["models"].items() if v is not None}
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.get("device", "auto"))
    items, skipped_items = pair_inputs(cfg["videos"], cfg["refs"], cfg["prompts"])
    skipped = [(s.name, s.reason) for s in skipped_items]
    detector = build_detector(cfg)

    names = list(cfg["metrics"])
    check_metric_names(names)
    if "facesim_dlib" not in names:  # the offline identity score is always computed
        names.insert(0, "facesim_dlib")
    groups, unavailable = [], {}
    for name in names:
        try:
            groups.append(build_group(name, cfg, out, device))
        except (FileNotFoundError, ImportError, OSError) as error:
            unavailable[name] = str(error)
            log.warning("metric %s unavailable: %s", name, error)

    rows: list[dict[str, Any]] = []
    for item in items:
        try:
            frames = read_mp4(item.video)
            reference_image = read_rgb(item.reference)
        except (ValueError, OSError) as error:
            skipped.append((item.name, f"unreadable: {error}"))
            continue
        found = reference_face(detector, reference_image)
        if found is None:
            skipped.append((item.name, f"no face found in the reference {item.reference}"))
            continue
        indices = evenly_sampled_indices(len(frames), int(cfg.get("num_frames", 16)))
        sampled = [frames[i] for i in indices]
        faces = largest_faces(detector, sampled)
        target = read_target(cfg.get("targets"), item.name)
        context = VideoContext(item.name, frames, sampled, faces, found[0], found[1], item.prompt, item.video, target)
        row: dict[str, Any] = {"video": item.name, "frames_sampled": len(sampled)}
        row["frames_with_face"] = sum(face is not None for face in faces)
        for group in groups:
            row.update(group.video(context))
        rows.append(row)
        log.info("evaluated %s: %s", item.name, {k: v for k, v in row.items() if k != "video"})

    set_level: dict[str, Any] = {}
    for group in groups:
        set_level.update(group.finish(out))
    aggregate = write_reports(out, rows, set_level, unavailable, skipped)
    if cfg.get("tensorboard_dir"):
        log_tensorboard(Path(cfg["tensorboard_dir"]), aggregate, int(cfg.get("tensorboard_step", 0)))
    return EvaluationResult(rows, set_level, aggregate, unavailable, skipped)
