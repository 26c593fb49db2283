"""Evaluation outputs: the per-video CSV, the aggregate table (markdown and CSV), TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

# What each column means, for the aggregate table (higher is better unless it says otherwise).
METRIC_DESCRIPTIONS = {
    "facesim_arc": "FaceSim-Arc: ArcFace (insightface) cosine, reference vs frame faces, clamped at 0",
    "facesim_cur": "FaceSim-Cur: CurricularFace IR-101 cosine, clamped at 0",
    "facesim_dlib": "offline identity: dlib 128-d cosine, clamped at 0",
    "clipscore": "CLIPScore: 100 * cos(prompt, frame), RGB frames",
    "clipscore_bgr_compat": "CLIPScore with BGR frames, as the official script (compat only)",
    "clip_t": "CLIP-T: cos(prompt, frame)",
    "clip_i": "CLIP-I: cos(reference, frame) of CLIP image embeddings",
    "dino": "DINO: cos(reference, frame) of DINO embeddings",
    "smoothness_clip": "temporal smoothness: cos of consecutive frames, CLIP",
    "smoothness_dino": "temporal smoothness: cos of consecutive frames, DINO",
    "fid_face": "FID (lower is better): all generated face crops vs all reference crops",
    "fid_face_per_frame": "official per-frame FID (lower is better): mean |f_ref - f_frame|^2",
    "freq_low": "mean log-amplitude of the low band of face spectra",
    "freq_high": "mean log-amplitude of the high band of face spectra",
    "freq_high_minus_low": "high-band minus low-band log-amplitude",
    "set_freq_full_frame_videos": "videos without a detected face whose spectrum came from the full frame",
}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row.get(key, "")) for key in columns})
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def aggregate(
    videos: Sequence[Mapping[str, Any]], set_level: Mapping[str, Any], unavailable: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per metric: mean over the videos where it is a number, how many, and notes."""
    rows: list[dict[str, Any]] = []
    columns = [key for key in (videos[0] if videos else {}) if key != "video"]
    for column in columns:
        values = [row[column] for row in videos if isinstance(row.get(column), (int, float))]
        if not values:
            continue
        finite = [float(v) for v in values if not math.isnan(float(v))]
        mean = sum(finite) / len(finite) if finite else math.nan
        note = METRIC_DESCRIPTIONS.get(column, "")
        if len(finite) < len(values):
            note += f" ({len(values) - len(finite)} video(s) had no face / no value)"
        rows.append({"metric": column, "value": mean, "videos": len(finite), "note": note.strip()})
    for column, value in set_level.items():
        rows.append(
            {
                "metric": column,
                "value": value,
                "videos": len(videos),
                "note": METRIC_DESCRIPTIONS.get(column, "set level"),
            }
        )
    for group, reason in unavailable.items():
        rows.append({"metric": group, "value": "unavailable", "videos": 0, "note": reason})
    return rows


def write_reports(
    out: Path,
    videos: Sequence[Mapping[str, Any]],
    set_level: Mapping[str, Any],
    unavailable: Mapping[str, str],
    skipped: Sequence[tuple[str, str]],
) -> list[dict[str, Any]]:
    """``per_video.csv``, ``aggregate.csv``, ``aggregate.md`` and ``skipped.csv`` in ``out``; returns the aggregate."""
    columns: list[str] = []
    for row in videos:
        columns += [key for key in row if key not in columns]
    write_csv(out / "per_video.csv", videos, columns or ["video"])
    rows = aggregate(videos, set_level, unavailable)
    write_csv(out / "aggregate.csv", rows, ["metric", "value", "videos", "note"])
    write_csv(out / "skipped.csv", [{"video": n, "reason": r} for n, r in skipped], ["video", "reason"])
    text = "# Evaluation\n\n" + markdown_table(
        ["metric", "value", "videos", "note"], [[r["metric"], r["value"], r["videos"], r["note"]] for r in rows]
    )
    if skipped:
        text += "\n## Skipped\n\n" + markdown_table(["video", "reason"], skipped)
    (out / "aggregate.md").write_text(text, encoding="utf-8")
    return rows


def log_tensorboard(run_dir: Path, rows: Sequence[Mapping[str, Any]], step: int = 0, prefix: str = "eval") -> None:
    """Every numeric aggregate value as a scalar ``<prefix>/<metric>`` in ``run_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir)) as writer:
        for row in rows:
            value = row["value"]
            if isinstance(value, (int, float)) and not math.isnan(float(value)):
                writer.add_scalar(f"{prefix}/{row['metric']}", float(value), step)
