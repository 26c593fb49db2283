"""`python -m idvid preprocess`: raw videos + captions -> a manifest and per-clip annotations that `fit` reads.

Per video: caption lookup, decode (PyAV), face detection on sampled frames, tracking, quality
filters on the main track, then the kept segment is written as mp4 with its .npz annotations
(see idvid.data.manifest). Every video ends as a record in `<out>/records/<id>.json`, kept or
skipped with its reason and metrics; a bad video never stops the run.

Resumable: a record is trusted only when its key (input file size and mtime, face backend and
every setting it depends on) matches the current one, and all files are written atomically, so
an interrupted run redoes only unfinished videos. Face detections are cached separately
(`<out>/cache/faces/<id>.npz`, keyed by the input, the backend and the detection settings), so
changing a filter threshold or the clip length re-runs the cheap steps, not the detector.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from idvid.atomic_files import read_json, write_atomic, write_json_atomic, write_npz_atomic
from idvid.data.manifest import write_manifest
from idvid.data.video_io import VideoReadError, iter_frames, probe_video, read_mp4, write_mp4
from idvid.faces import FaceAnalyzer, build_face_analyzer
from idvid.faces.parsing import FaceParser
from idvid.preprocess.annotate import (
    ClipSettings,
    MaskSettings,
    annotate_clip,
    build_parser,
    reference_arrays,
    track_frames,
)
from idvid.preprocess.captions import Captions
from idvid.preprocess.filters import FilterSettings, failed_filters, main_track, track_metrics
from idvid.preprocess.records import file_fingerprint, settings_key
from idvid.preprocess.summary import print_summary
from idvid.preprocess.tracking import FaceAnalysis, TrackingSettings, analyze_video

log = logging.getLogger(__name__)

# Bump when the same inputs and settings would give different detections / outputs.
ANALYSIS_VERSION = 1
OUTPUT_VERSION = 2  # 2: landmarks, reference_faces and reference_matrices in the .npz
OUTPUT_FOLDERS = ("videos", "annotations", "records", "cache", "logs")


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything a preprocessing run depends on (the Hydra config `preprocess.yaml`, flattened).

    face: the face backend config ({"name": "dlib" | "insightface", "options": {...}}); it is part
    of every cache key, so switching backends recomputes everything. mask: how face masks are made
    (the parser's weights file, by name, size and mtime, and its classes are part of the record
    key). detect_every: run the
    detector on every k-th frame (faces in between are interpolated). rank/world_size: this
    process takes inputs rank, rank + world_size, ... of the sorted list.
    """

    raw: Path
    out: Path
    captions: Path | None = None
    face: dict = field(default_factory=lambda: {"name": "dlib", "options": {}})
    detect_every: int = 1
    tracking: TrackingSettings = TrackingSettings()
    filters: FilterSettings = FilterSettings()
    clip: ClipSettings = ClipSettings()
    align_size: int = 512
    mask: MaskSettings = MaskSettings()
    rank: int = 0
    world_size: int = 1


@dataclass
class Job:
    """One input video: its id in the output and its path."""

    clip_id: str
    source: Path


def find_inputs(settings: PreprocessSettings) -> list[Job]:
    """Every file under `raw` (sorted) except captions and hidden files; ids from relative paths.

    Non-video files are listed too: they end as a recorded skip, so nothing is silently ignored.
    """
    raw = settings.raw
    if not raw.is_dir():
        raise FileNotFoundError(f"raw video folder not found: {raw}; pass data.raw=<folder of videos and captions>")
    # What a run writes (when data.out lies inside data.raw) is no input.
    outputs = [settings.out.resolve() / name for name in OUTPUT_FOLDERS]
    skip = {settings.captions.resolve()} if settings.captions else set()
    files = []
    for path in sorted(raw.rglob("*")):
        relative = path.relative_to(raw)
        if not path.is_file() or path.suffix.lower() == ".txt" or path.resolve() in skip:
            continue
        if any(part.startswith(".") for part in relative.parts) or any(o in path.resolve().parents for o in outputs):
            continue
        files.append(path)
    stems = [str(p.relative_to(raw).with_suffix("")) for p in files]
    jobs = []
    for path, stem in zip(files, stems):
        name = stem if stems.count(stem) == 1 else f"{stem}-{path.suffix.lstrip('.')}"  # a.mp4 and a.mov
        jobs.append(Job("".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__")), path))
    return jobs


def build_analyzer(face: dict) -> FaceAnalyzer:
    """The face backend named by the config ({"name": ..., "options": {...}})."""
    return build_face_analyzer(face.get("name"), **dict(face.get("options") or {}))


class Preprocessor:
    """Runs the pipeline over a folder; `run()` returns the summary (counts by status and reason)."""

    def __init__(
        self, settings: PreprocessSettings, analyzer: FaceAnalyzer | None = None, parser: FaceParser | None = None
    ):
        """analyzer / parser: ready-built face backend and face parser (tests pass small ones); built from
        the settings when None. The parser is used only when settings.mask.parser_weights is set."""
        if not 0 <= settings.rank < settings.world_size:
            raise ValueError(f"rank must be in [0, world_size={settings.world_size}), got {settings.rank}")
        if settings.clip.num_frames < 1 or settings.clip.frame_stride < 1:
            raise ValueError(f"clip.num_frames and clip.frame_stride must be >= 1, got {settings.clip}")
        self.settings = settings
        self.captions = Captions(settings.raw, settings.captions)
        self.jobs = find_inputs(settings)
        # Built up front: a missing model folder is a configuration error and fails before any video.
        self.analyzer = analyzer if analyzer is not None else build_analyzer(settings.face)
        self.parser = None
        if settings.mask.parser_weights is not None:
            self.parser = parser if parser is not None else build_parser(settings.mask)
        self.out = settings.out

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        mine = self.jobs[self.settings.rank :: self.settings.world_size]
        log.info(
            "preprocess: %d inputs in %s, this process (rank %d of %d) takes %d",
            len(self.jobs), self.settings.raw, self.settings.rank, self.settings.world_size, len(mine),
        )  # fmt: skip
        records = []
        for index, job in enumerate(mine, start=1):
            record = self.process(job)
            records.append(record)
            what = record["status"] if record["status"] == "kept" else f"{record['status']}: {record['reason']}"
            detail = f" ({record['detail']})" if record.get("detail") else ""
            reused = " [done earlier]" if record.get("reused") else ""
            log.info(
                "[%d/%d] %s: %s%s %.1f s%s", index, len(mine), job.clip_id, what, detail, record["seconds"], reused
            )
        manifest = self.write_manifest()
        summary = print_summary(records, time.perf_counter() - start, manifest)
        write_json_atomic(self.out / f"summary-rank{self.settings.rank}.json", summary)
        return summary

    def record_path(self, job: Job) -> Path:
        return self.out / "records" / f"{job.clip_id}.json"

    def process(self, job: Job) -> dict[str, Any]:
        """Process one input (or reuse its finished record); never raises for a bad input."""
        start = time.perf_counter()
        record: dict[str, Any] = {"id": job.clip_id, "source": str(job.source.relative_to(self.settings.raw))}
        try:
            caption = self.captions.lookup(job.source)
            key = self.record_key(job, caption is not None)
            previous = read_json(self.record_path(job))
            if previous and previous.get("key") == key and self.is_final(previous):
                return {**previous, "reused": True, "seconds": time.perf_counter() - start}
            record["key"] = key
            probe_video(job.source)  # a file that is no video is skipped as such, caption or not
            if caption is None:
                self.skip(record, "missing_caption", f"no {job.source.with_suffix('.txt').name} and no captions row")
            else:
                self.analyze_and_write(job, record)
        except PermissionError as err:
            self.skip(record, "unreadable", str(err))
        except VideoReadError as err:
            self.skip(record, err.reason, err.detail)
        except Exception as err:  # a backend failing on odd input must not stop the batch
            log.error(
                "%s: unexpected error, recorded and retried on the next run:\n%s", job.clip_id, traceback.format_exc()
            )
            record.update(status="error", reason=type(err).__name__, detail=str(err))
        record["seconds"] = round(time.perf_counter() - start, 3)
        if record["status"] != "kept":
            for stale in (self.out / "videos" / f"{job.clip_id}.mp4", self.out / "annotations" / f"{job.clip_id}.npz"):
                stale.unlink(missing_ok=True)  # from an earlier run with other settings
        write_json_atomic(self.record_path(job), record)  # last: its presence marks the clip done
        return record

    def is_final(self, record: dict[str, Any]) -> bool:
        """A record to trust as it is: kept with its files present, or skipped for a lasting reason.

        Unexpected errors and unreadable files (permissions change without touching the file's
        size or mtime) are retried on the next run.
        """
        if record.get("status") == "kept":
            return all((self.out / record[key]).is_file() for key in ("video", "annotations"))
        return record.get("status") == "skipped" and record.get("reason") != "unreadable"

    @staticmethod
    def skip(record: dict[str, Any], reason: str, detail: str) -> None:
        record.update(status="skipped", reason=reason, detail=detail)

    # ------------------------------------------------------------ the stages
    def analysis_key(self, job: Job) -> str:
        s = self.settings
        return settings_key(ANALYSIS_VERSION, file_fingerprint(job.source), s.face, s.detect_every, asdict(s.tracking))

    def record_key(self, job: Job, has_caption: bool) -> str:
        s = self.settings
        outputs = (asdict(s.filters), asdict(s.clip), s.align_size, self.mask_key(), OUTPUT_VERSION, has_caption)
        return settings_key(self.analysis_key(job), *outputs)

    def mask_key(self) -> dict[str, Any] | None:
        """What the masks depend on: None for the landmark fallback, else the parser's weights and classes."""
        mask = self.settings.mask
        if mask.parser_weights is None:
            return None
        return {"parser": file_fingerprint(mask.parser_weights), "face_classes": list(mask.face_classes)}

    def faces(self, job: Job) -> FaceAnalysis:
        """Detections and tracks of the video, from the cache when the input and detector settings match."""
        key = self.analysis_key(job)
        path = self.out / "cache" / "faces" / f"{job.clip_id}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["key"]) == key:
                    return FaceAnalysis.from_arrays({name: npz[name] for name in npz.files})
        except (OSError, ValueError, KeyError):
            pass  # missing, stale or unreadable: recompute
        analysis = analyze_video(job.source, self.analyzer, self.settings.detect_every, self.settings.tracking)
        write_npz_atomic(path, {**analysis.to_arrays(), "key": np.array(key)})
        return analysis

    def analyze_and_write(self, job: Job, record: dict[str, Any]) -> None:
        s = self.settings
        analysis = self.faces(job)
        track = main_track(analysis)
        if track is None:
            self.skip(record, "no_face", f"no face in {len(analysis.sampled)} sampled frames")
            return
        metrics = track_metrics(analysis, track)
        record["metrics"] = metrics
        failed = failed_filters(metrics, s.filters, s.clip.span)
        if failed:
            record["failed"] = [reason for reason, _ in failed]
            self.skip(record, *failed[0])
            return
        first, last = metrics["first_frame"], metrics["last_frame"]
        faces = track_frames(analysis, track, first, last, s.tracking.max_gap * s.detect_every)
        frames = np.stack([f for t, f in enumerate(iter_frames(job.source)) if first <= t <= last])
        # yuv420p needs even sizes: drop a last odd row/column (coordinates are unchanged).
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        arrays = annotate_clip(frames, faces, s.clip, s.align_size, self.parser)
        arrays["source_frames"] = np.array([first, last], dtype=np.int64)
        video = self.out / "videos" / f"{job.clip_id}.mp4"
        fps = max(1, int(round(analysis.fps))) if analysis.fps > 0 else 25
        write_atomic(video, lambda tmp: write_mp4(tmp, frames, fps=fps))
        # Aligned from the frames as training will decode them, so the reference pixels are unchanged.
        arrays.update(reference_arrays(read_mp4(video), arrays["kps"], arrays["masks"], arrays["valid"]))
        write_npz_atomic(self.out / "annotations" / f"{job.clip_id}.npz", arrays)
        record.update(
            status="kept",
            reason=None,
            video=f"videos/{job.clip_id}.mp4",
            annotations=f"annotations/{job.clip_id}.npz",
            reference_frame=int(arrays["reference_frame"]),
            mask_source=str(arrays["mask_source"]),
        )

    # ------------------------------------------------------------ the manifest
    def write_manifest(self) -> Path | None:
        """Write `<out>/manifest.jsonl` once every input (all ranks) has a current record; else None.

        Captions and identities are read now, so editing a caption needs no reprocessing.
        """
        entries, pending = [], 0
        for job in self.jobs:
            record = read_json(self.record_path(job))
            if record is None:
                pending += 1
                continue
            if record["status"] != "kept" and not self.is_final(record):
                continue  # an error or an unreadable file: recorded, retried by the next run, not kept
            try:
                caption = self.captions.lookup(job.source)
                current = record.get("key") == self.record_key(job, caption is not None)
            except OSError:  # vanished or unreadable since its record was written
                current = False
            if not current or not self.is_final(record):
                pending += 1
            elif record["status"] == "kept":
                identity = caption["identity"] or job.clip_id
                entries.append({"id": job.clip_id, "video": record["video"], "caption": caption["caption"],
                                "annotations": record["annotations"], "identity": identity})  # fmt: skip
        manifest = self.out / "manifest.jsonl"
        if pending:
            log.info("%d inputs have no finished record yet (other ranks or errors): manifest not written", pending)
            return None
        if not entries:
            log.warning("no video passed the filters: no manifest written; see %s/records/*.json", self.out)
            manifest.unlink(missing_ok=True)
            return None
        write_atomic(manifest, lambda tmp: write_manifest(tmp, entries))
        return manifest
