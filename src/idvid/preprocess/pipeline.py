"""`python -m idvid preprocess`: raw videos + captions -> a manifest and per-clip annotations that `fit` reads.

Per video: caption lookup, decode (PyAV), face detection on sampled frames, tracking, quality
filters on the main track, then the kept segment is written as mp4 with its .npz annotations
(see idvid.data.manifest). Every input ends as a record in `<out>/records/<id>.json`, kept or
skipped with its reason and metrics; a bad video never stops the run. Clip ids are unique per input
(`clip_ids`) and `<out>/clip_ids.json` maps each input path to its id.

Resumable: a record is trusted only when its key (input file size and mtime, face backend and
every setting it depends on) matches the current one, and all files are written atomically, so
an interrupted run redoes only unfinished videos (and deletes the temporary files it left). Face
detections are cached separately (`<out>/cache/faces/<id>.npz`, keyed by the input, the backend
and the detection settings), so changing a filter threshold or the clip length re-runs the cheap
steps, not the detector.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from idvid.atomic_files import read_json, remove_leftovers, write_atomic, write_json_atomic, write_npz_atomic
from idvid.data.manifest import write_manifest
from idvid.data.video_io import VideoReadError, iter_frames, probe_video, read_mp4, write_mp4
from idvid.errors import ConfigError
from idvid.evaluation.syncnet import SyncNet, load_syncnet, sync_score
from idvid.faces import FaceAnalyzer, face_analyzer_from_config
from idvid.faces.parsing import FaceParser
from idvid.faces.regions import region_boxes
from idvid.output_paths import OutputExistsError
from idvid.preprocess.annotate import (
    ClipSettings,
    MaskSettings,
    annotate_clip,
    build_parser,
    reference_arrays,
    track_frames,
)
from idvid.preprocess.audio_track import audio_arrays, source_clip_audio
from idvid.preprocess.captions import Captions
from idvid.preprocess.filters import FilterSettings, failed_filters, failed_sync_filters, main_track, track_metrics
from idvid.preprocess.records import file_fingerprint, settings_key
from idvid.preprocess.summary import print_summary
from idvid.preprocess.tracking import FaceAnalysis, TrackingSettings, analyze_video

log = logging.getLogger(__name__)

# Bump when the same inputs and settings would give different detections / outputs.
ANALYSIS_VERSION = 1
OUTPUT_VERSION = 3  # 2: landmarks, reference_faces and reference_matrices in the .npz; 3: audio, eye/mouth boxes
OUTPUT_FOLDERS = ("videos", "annotations", "records", "cache", "logs")


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything a preprocessing run depends on (the Hydra config `preprocess.yaml`, flattened).

    face: the face backend config ({"name": "dlib" | "insightface", "options": {...}}); it is part
    of every cache key, so switching backends recomputes everything. mask: how face masks are made
    (the parser's weights file, by name, size and mtime, and its classes are part of the record
    key). detect_every: run the
    detector on every k-th frame (faces in between are interpolated). rank/world_size: this
    process takes inputs rank, rank + world_size, ... of the sorted list. overwrite: write into an
    `out` that holds a data set preprocess did not write (else refused; its own output is resumed).
    audio_mel_bins: mel bins of the cached Whisper input features (80: Whisper up to large-v2; 128: large-v3).
    syncnet_weights: SyncNet's weights file for the lip-sync filter (filters.min_sync_confidence /
    max_sync_distance); None when that filter is off.
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
    overwrite: bool = False
    audio_mel_bins: int = 80
    syncnet_weights: Path | None = None


@dataclass
class Job:
    """One input: its id in the output, its path, and why it cannot be read when that is known from listing it.

    problem: (reason, detail) for a directory entry that is no readable file (a broken link, a link loop, a
    linked folder, a FIFO); such an input is recorded as skipped with that reason.
    """

    clip_id: str
    source: Path
    problem: tuple[str, str] | None = None


def find_inputs(settings: PreprocessSettings) -> list[Job]:
    """Every entry under `raw` (sorted) except folders, captions and hidden files, each with a unique clip id.

    Non-video files, broken links, link loops and other entries that are no regular file are listed
    too: they end as a recorded skip, so nothing is silently ignored. Folders reached through a link
    are not searched (a link can lead back into the tree); they are recorded as skipped.
    """
    raw = settings.raw
    if not raw.is_dir():
        raise FileNotFoundError(f"raw video folder not found: {raw}; pass data.raw=<folder of videos and captions>")
    # What a run writes (when data.out lies inside data.raw) is no input.
    outputs = [settings.out.resolve() / name for name in OUTPUT_FOLDERS]
    skip = {settings.captions.resolve()} if settings.captions else set()
    entries, hidden = [], 0
    for path in sorted(raw.rglob("*")):
        relative = path.relative_to(raw)
        if any(part.startswith(".") for part in relative.parts):
            hidden += 1
            continue
        if path.suffix.lower() == ".txt":
            continue  # sidecar captions
        if path.is_dir() and not path.is_symlink():
            continue  # searched by rglob itself
        location = path.parent.resolve() / path.name  # the entry itself, not what a link points to
        problem = entry_problem(path)
        places = {location} if problem else {location, path.resolve()}
        if places & skip or any(o in place.parents for o in outputs for place in places):
            continue
        entries.append((path, problem))
    if hidden:
        log.info("%d hidden entries under %s (names starting with '.') are not inputs", hidden, raw)
    ids = clip_ids([path.relative_to(raw) for path, _ in entries])
    return [Job(clip_id, path, problem) for clip_id, (path, problem) in zip(ids, entries)]


def entry_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) when the directory entry `path` is not a regular file (or a link to one), else None."""
    try:
        mode = path.stat().st_mode  # follows links
    except OSError as err:
        if not path.is_symlink():
            return "unreadable", str(err)
        target = os.readlink(path)
        if err.errno == errno.ELOOP:
            return "symlink_loop", f"link to {target}, which leads back to a link already followed"
        return "broken_symlink", f"link to {target}, which does not exist"
    if stat.S_ISDIR(mode):
        return "symlinked_folder", (
            f"link to the folder {os.readlink(path)}; folders behind links are not searched: "
            "preprocess it with its own data.raw, or link the video files"
        )
    if not stat.S_ISREG(mode):
        return "not_a_file", "a FIFO, socket or device, not a file a decoder can read"
    return None


def clip_ids(relatives: list[Path]) -> list[str]:
    """A clip id per input path (relative to raw), unique even on a case-insensitive file system.

    The id is the path without its extension, folders joined by "__", other characters than letters,
    digits, "-", "_" and "." replaced by "_". Inputs that end up with the same id get their extension
    appended (a.mp4, a.mov -> a-mp4, a-mov); when that still clashes (a b.mp4, a_b.mp4), a short hash
    of the relative path instead. The ids depend only on the paths, so every run and every rank agrees.
    `<out>/clip_ids.json` records the mapping.
    """

    def clean(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

    bases = [clean(relative.with_suffix("").as_posix().replace("/", "__")) for relative in relatives]
    ids = list(bases)
    for index in _clashing(ids):
        ids[index] = f"{bases[index]}-{clean(relatives[index].suffix.lstrip('.'))}"
    for index in _clashing(ids):
        ids[index] = f"{bases[index]}-{hashlib.sha256(relatives[index].as_posix().encode()).hexdigest()[:8]}"
    clashing = _clashing(ids)
    if clashing:
        first, second = clashing[:2]
        raise ConfigError(
            f"inputs {relatives[first].as_posix()!r} and {relatives[second].as_posix()!r} both map to clip id "
            f"{ids[first]!r}",
            "rename one of them (clip ids come from the file names; see clip_ids in idvid.preprocess.pipeline)",
        )
    return ids


def _clashing(ids: list[str]) -> list[int]:
    """Indices of the ids that another id equals, ignoring case (records/<id>.json must be distinct files)."""
    counts = Counter(clip_id.casefold() for clip_id in ids)
    return [index for index, clip_id in enumerate(ids) if counts[clip_id.casefold()] > 1]


def refuse_foreign_dataset(out: Path, overwrite: bool) -> None:
    """Refuse an `out` holding a data set that preprocess did not write (the demo, an import, one made by hand).

    Its clips and manifest would be overwritten by same-named ones. A folder preprocess wrote (it has
    its records, face cache or clip_ids.json, even after a kill) is resumed, never refused.
    """
    if overwrite or any((out / name).exists() for name in ("records", "cache", "clip_ids.json")):
        return
    dataset = [name for name in ("manifest.jsonl", "videos", "annotations") if (out / name).exists()]
    if dataset:
        raise OutputExistsError(
            f"data.out={out} holds a data set that preprocess did not write ({', '.join(dataset)})",
            "choose another data.out, or pass overwrite=true to write over its clips and manifest",
        )


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
        refuse_foreign_dataset(settings.out, settings.overwrite)
        self.captions = Captions(settings.raw, settings.captions)
        self.jobs = find_inputs(settings)
        # Built up front: a missing model folder is a configuration error and fails before any video.
        self.analyzer = analyzer if analyzer is not None else face_analyzer_from_config(settings.face)
        self.parser = None
        if settings.mask.parser_weights is not None:
            self.parser = parser if parser is not None else build_parser(settings.mask)
        self.syncnet: SyncNet | None = None
        if settings.filters.checks_lip_sync:
            if settings.syncnet_weights is None:
                raise ConfigError(
                    "filters.min_sync_confidence / max_sync_distance are set but syncnet_weights is null",
                    "pass syncnet_weights=/path/to/syncnet_v2.model, or set both lip-sync thresholds to null",
                )
            self.syncnet = load_syncnet(settings.syncnet_weights)
        self.out = settings.out

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        mine = self.jobs[self.settings.rank :: self.settings.world_size]
        log.info(
            "preprocess: %d inputs in %s, this process (rank %d of %d) takes %d",
            len(self.jobs), self.settings.raw, self.settings.rank, self.settings.world_size, len(mine),
        )  # fmt: skip
        self.remove_leftovers(mine)
        # Every rank writes the same mapping (ids depend only on the paths).
        write_json_atomic(self.out / "clip_ids.json", {self.relative(job): job.clip_id for job in self.jobs})
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

    def relative(self, job: Job) -> str:
        return job.source.relative_to(self.settings.raw).as_posix()

    def remove_leftovers(self, mine: list[Job]) -> None:
        """Delete the temporary files a killed run left for this rank's outputs.

        Only this rank's clips and summary (ranks take disjoint inputs), and the manifest's when no
        other rank may be writing it right now, so no live writer loses its file.
        """
        folders = {"videos": ".mp4", "annotations": ".npz", "records": ".json", "cache/faces": ".npz"}
        removed = []
        for folder, suffix in folders.items():
            removed += remove_leftovers(self.out / folder, {f"{job.clip_id}{suffix}" for job in mine})
        own = {f"summary-rank{self.settings.rank}.json"}
        if self.settings.world_size == 1:
            own.add("manifest.jsonl")
        removed += remove_leftovers(self.out, own)
        if removed:
            log.info("removed %d temporary files left by an interrupted run, e.g. %s", len(removed), removed[0])

    def process(self, job: Job) -> dict[str, Any]:
        """Process one input (or reuse its finished record); never raises for a bad input."""
        start = time.perf_counter()
        record: dict[str, Any] = {"id": job.clip_id, "source": self.relative(job)}
        try:
            if job.problem is not None:  # no file to read: redone (cheaply) by every run, never reused
                self.skip(record, *job.problem)
                return self.finish(job, record, start)
            caption = self.captions.lookup(job.source)
            key = self.record_key(job, caption is not None)
            previous = read_json(self.record_path(job))
            same_input = previous and previous.get("source") == record["source"]  # ids are reassigned on clashes
            if same_input and previous.get("key") == key and self.is_final(previous):
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
        return self.finish(job, record, start)

    def finish(self, job: Job, record: dict[str, Any], start: float) -> dict[str, Any]:
        """Remove what an earlier run kept for a clip that is not kept now, then write its record."""
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
        syncnet = file_fingerprint(s.syncnet_weights) if self.syncnet is not None else None
        outputs = (asdict(s.filters), asdict(s.clip), s.align_size, self.mask_key(), OUTPUT_VERSION, has_caption)
        return settings_key(self.analysis_key(job), *outputs, s.audio_mel_bins, syncnet)

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
        arrays["eye_boxes"], arrays["mouth_boxes"] = region_boxes(arrays["landmarks"])
        source_fps = analysis.fps if analysis.fps > 0 else 25.0
        audio = source_clip_audio(job.source, first, len(frames), source_fps)
        arrays.update(audio_arrays(audio, len(frames), source_fps, s.audio_mel_bins))
        record["has_audio"] = audio is not None
        if self.syncnet is not None and audio is not None:
            score = sync_score(self.syncnet, frames, arrays["boxes"], audio, source_fps)
            if score is not None:  # None: shorter than SyncNet's 0.2 s window, nothing to judge
                metrics.update(sync_confidence=score.confidence, sync_distance=score.distance, sync_offset=score.offset)
                failed = failed_sync_filters(metrics, s.filters)
                if failed:
                    record["failed"] = [reason for reason, _ in failed]
                    self.skip(record, *failed[0])
                    return
        video = self.out / "videos" / f"{job.clip_id}.mp4"
        fps = max(1, int(round(analysis.fps))) if analysis.fps > 0 else 25
        write_atomic(video, lambda tmp: write_mp4(tmp, frames, fps=fps, audio=audio))
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
        entries, pending = [], []
        for job in self.jobs:
            if job.problem is not None:
                continue  # never kept; known from the listing, whichever rank records it
            record = read_json(self.record_path(job))
            if record is None or record.get("source") != self.relative(job):
                pending.append(job.clip_id)
                continue
            if record["status"] != "kept" and not self.is_final(record):
                continue  # an error or an unreadable file: recorded, retried by the next run, not kept
            try:
                caption = self.captions.lookup(job.source)
                current = record.get("key") == self.record_key(job, caption is not None)
            except OSError:  # vanished or unreadable since its record was written
                current = False
            if not current or not self.is_final(record):
                pending.append(job.clip_id)
            elif record["status"] == "kept":
                identity = caption["identity"] or job.clip_id
                entries.append({"id": job.clip_id, "video": record["video"], "caption": caption["caption"],
                                "annotations": record["annotations"], "identity": identity})  # fmt: skip
        manifest = self.out / "manifest.jsonl"
        if pending:
            log.info(
                "manifest not written: %d inputs have no finished record yet (%s): other ranks still at work, "
                "or errors that the next run retries (see records/<id>.json)",
                len(pending), ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else ""),
            )  # fmt: skip
            return None
        if not entries:
            log.warning("no video passed the filters: no manifest written; see %s/records/*.json", self.out)
            manifest.unlink(missing_ok=True)
            return None
        write_atomic(manifest, lambda tmp: write_manifest(tmp, entries))
        return manifest
