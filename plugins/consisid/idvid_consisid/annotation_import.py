"""Import a data set annotated by ConsisID's released data pipeline into idvid's manifest format.

``python -m idvid preprocess data.importer=consisid data.source=<total_train_data.txt> data.out=<folder>``
(the dataset importer ``consisid``).

The layout it reads (as ConsisID's training dataloader does):

- a list file (`total_train_data.txt`), one line per part: `videos_dir,captions.json,anno_base`;
- `captions.json`: a JSON list of `{"path": ..., "cap": ..., "fps": ..., "duration": ...}`; the
  video is `videos_dir/<basename of path>`, its name `<stem>`;
- `anno_base/refine_bbox_jsons/<name>.json`: per frame (key: the frame index as a string)
  `{"face": [...], "head": [...], "person": [...]}`, each item `{"box": {"x1", "y1", "x2", "y2"},
  "confidence": ..., "new_track_id": ...}`;
- `anno_base/track_masks_data/<name>/valid_frame.json`: `{track: {"face": [frames], "head": [frames]}}`,
  `control_sam2_frame.json`: `{track: {"face": frame, "head": frame}}`, and the per-track masks
  `tracking_mask_results/<track>/annotated_frame_<frame:05d>.png` (non-zero = the person's face/head).

Each track with face and head frames becomes one clip (`<name>-<track>`, its own identity). Boxes,
valid frames, masks and the reference frame (ConsisID's control frame) come from the annotations;
the 5 keypoints and identity embeddings, which ConsisID computes at training time, come from the
chosen face backend, taking on each frame the detection that overlaps the annotated box most.
Videos are referenced where they are, not copied.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from idvid.atomic_files import read_json, write_atomic, write_json_atomic, write_npz_atomic
from idvid.data.manifest import write_manifest
from idvid.data.video_io import VideoReadError, iter_frames
from idvid.faces import FaceAnalyzer
from idvid.faces.reference import NUM_LANDMARKS
from idvid.preprocess.annotate import face_mask, reference_arrays
from idvid.preprocess.records import file_fingerprint, settings_key
from idvid.preprocess.summary import print_summary
from idvid.preprocess.tracking import box_iou
from idvid.registry import register_dataset_importer

log = logging.getLogger(__name__)

IMPORT_VERSION = 2  # 2: landmarks and the aligned reference faces in the .npz
MASK_SOURCE = "consisid_sam2"


def read_list_file(list_file: Path) -> list[dict[str, Any]]:
    """Every video of the list file: {"name", "video", "caption", "anno_base"} (paths made absolute).

    A malformed list or captions file is a configuration error (ValueError / FileNotFoundError).
    """
    if not list_file.is_file():
        raise FileNotFoundError(
            f"ConsisID list file not found: {list_file}; pass data.importer=consisid data.source=<total_train_data.txt>"
        )
    videos = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:
            raise ValueError(f"{list_file}:{lineno}: expected `videos_dir,captions.json,anno_base`, got {line!r}")
        videos_dir, captions, anno_base = (list_file.parent / Path(part).expanduser() for part in parts)
        if not captions.is_file():
            raise FileNotFoundError(f"{list_file}:{lineno}: captions file not found: {captions}")
        entries = json.loads(captions.read_text())
        if not isinstance(entries, list):
            raise ValueError(f"{captions}: expected a JSON list of {{path, cap, ...}} objects")
        for entry in entries:
            video = videos_dir / Path(entry["path"]).name
            videos.append({"name": video.stem, "video": video, "caption": entry.get("cap"), "anno_base": anno_base})
    return videos


@register_dataset_importer("consisid")
def import_consisid(
    list_file: str | Path, out: str | Path, analyzer: FaceAnalyzer, face: dict, min_frames: int
) -> dict[str, Any]:
    """Import every video of `list_file` into `out` (manifest.jsonl, annotations/, records/); returns the summary.

    face: the backend's config (part of each clip's key, so switching backends re-imports).
    min_frames: clips whose annotated face frames span fewer frames are skipped as `too_short`.
    Bad entries (missing video or annotations, undecodable video, no caption) are recorded skips.
    """
    start = time.perf_counter()
    out = Path(out)
    records, entries = [], []
    for item in read_list_file(Path(list_file).expanduser()):
        for record in _import_video(item, out, analyzer, face, min_frames):
            records.append(record)
            log.info("%s: %s %s", record["id"], record["status"], record.get("reason") or "")
            if record["status"] == "kept":
                fields = ("id", "video", "caption", "annotations", "identity")
                entries.append({key: record[key] for key in fields})
    manifest = out / "manifest.jsonl"
    if entries:
        write_atomic(manifest, lambda tmp: write_manifest(tmp, entries))
    summary = print_summary(records, time.perf_counter() - start, manifest if entries else None)
    write_json_atomic(out / "summary-consisid-import.json", summary)
    return summary


def _skip(clip_id: str, reason: str, detail: str) -> dict[str, Any]:
    return {"id": clip_id, "status": "skipped", "reason": reason, "detail": detail, "seconds": 0.0}


def _import_video(item: dict, out: Path, analyzer: FaceAnalyzer, face: dict, min_frames: int) -> list[dict]:
    name, video, anno_base = item["name"], item["video"], item["anno_base"]
    track_dir = anno_base / "track_masks_data" / name
    files = {
        "video": video,
        "boxes": anno_base / "refine_bbox_jsons" / f"{name}.json",
        "valid_frame": track_dir / "valid_frame.json",
        "control_frame": track_dir / "control_sam2_frame.json",
    }
    missing = [f"{what} {path}" for what, path in files.items() if not path.is_file()]
    if missing:
        return [_skip(name, "missing_video" if not video.is_file() else "missing_annotations", "; ".join(missing))]
    if not item["caption"]:
        return [_skip(name, "missing_caption", "captions.json has no `cap` for it")]
    valid_frame = json.loads(files["valid_frame"].read_text())
    tracks = [t for t, frames in valid_frame.items() if frames.get("face") and frames.get("head")]
    if not tracks:
        return [_skip(name, "no_face", "no track has both face and head frames")]
    key = settings_key(IMPORT_VERSION, face, min_frames, *(file_fingerprint(p) for p in files.values()))
    done = [read_json(out / "records" / f"{name}-{t}.json") for t in tracks]
    if all(r and r.get("key") == key for r in done):
        return [{**r, "reused": True} for r in done]
    started = time.perf_counter()
    try:
        frames = np.stack(list(iter_frames(video)))
    except (VideoReadError, PermissionError) as err:
        reason = getattr(err, "reason", "unreadable")
        return [_skip(name, reason, str(err))]
    boxes_json = json.loads(files["boxes"].read_text())
    controls = json.loads(files["control_frame"].read_text())
    records = []
    for track in tracks:
        clip_id = f"{name}-{track}"
        record = _import_track(frames, boxes_json, valid_frame[track], controls.get(track, {}), track_dir, track,
                               analyzer, min_frames)  # fmt: skip
        record.update(id=clip_id, key=key, seconds=round(time.perf_counter() - started, 3))
        if record["status"] == "kept":
            arrays = record.pop("arrays")
            write_npz_atomic(out / "annotations" / f"{clip_id}.npz", arrays)
            record.update(video=str(video.resolve()), annotations=f"annotations/{clip_id}.npz")
            record.update(caption=item["caption"], identity=clip_id)
        write_json_atomic(out / "records" / f"{clip_id}.json", record)
        records.append(record)
    return records


def _track_box(boxes_json: dict, frame: int, kind: str, track: str) -> np.ndarray | None:
    for entry in boxes_json.get(str(frame), {}).get(kind, []):
        if str(entry.get("new_track_id")) == str(track):
            box = entry["box"]
            return np.array([box["x1"], box["y1"], box["x2"], box["y2"]], dtype=np.float32)
    return None


def _import_track(
    frames: np.ndarray,
    boxes_json: dict,
    valid: dict,
    control: dict,
    track_dir: Path,
    track: str,
    analyzer: FaceAnalyzer,
    min_frames: int,
) -> dict[str, Any]:
    num, height, width, _ = frames.shape
    face_frames = sorted(int(t) for t in valid["face"] if 0 <= int(t) < num)
    span = face_frames[-1] - face_frames[0] + 1 if face_frames else 0
    if span < min_frames:
        return {"status": "skipped", "reason": "too_short", "detail": f"face frames span {span} < {min_frames}"}
    dim = int(analyzer.embedding_dim)
    arrays = {
        "boxes": np.full((num, 4), np.nan, np.float32),
        "kps": np.full((num, 5, 2), np.nan, np.float32),
        "landmarks": np.full((num, NUM_LANDMARKS, 2), np.nan, np.float32),
        "valid": np.zeros(num, bool),
        "masks": np.zeros((num, height, width), np.uint8),
        "embeddings": np.zeros((num, dim), np.float32),
    }
    sources = set()
    for t in face_frames:
        box = _track_box(boxes_json, t, "face", track)
        if box is None:
            continue
        faces = analyzer.detect(frames[t])
        overlaps = [box_iou(box, np.asarray(f.box, np.float32)) for f in faces]
        if not overlaps or max(overlaps) < 0.3:
            continue  # the backend finds no face where ConsisID annotated one: no keypoints, so not valid
        detected = faces[int(np.argmax(overlaps))]
        arrays["boxes"][t], arrays["kps"][t] = box, detected.kps
        if detected.landmarks is not None and len(detected.landmarks) == NUM_LANDMARKS:
            arrays["landmarks"][t] = detected.landmarks
        arrays["embeddings"][t] = analyzer.embed(frames[t], detected)
        arrays["valid"][t] = True
        png = track_dir / "tracking_mask_results" / str(track) / f"annotated_frame_{t:05d}.png"
        mask = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE) if png.is_file() else None
        if mask is not None:
            mask = (
                cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
                if mask.shape != (height, width)
                else mask
            )
            arrays["masks"][t] = (mask > 0).astype(np.uint8)
            sources.add(MASK_SOURCE)
        else:
            landmarks = detected.landmarks if detected.landmarks is not None else np.zeros((0, 2), np.float32)
            arrays["masks"][t], source = face_mask((height, width), box, landmarks)
            sources.add(source)
    if not arrays["valid"].any():
        return {"status": "skipped", "reason": "no_face", "detail": "the face backend matched no annotated face box"}
    # ConsisID's control frame is its reference; when it has no usable face, the first face frame is.
    control_frame = int(control.get("face", -1))
    reference = control_frame if 0 <= control_frame < num and arrays["valid"][control_frame] else int(face_frames[0])
    reference = reference if arrays["valid"][reference] else int(np.flatnonzero(arrays["valid"])[0])
    arrays.update(reference_arrays(frames, arrays["kps"], arrays["masks"], arrays["valid"]))
    arrays.update(
        embedding_dim=np.array(dim, dtype=np.int64),
        mask_source=np.array("+".join(sorted(sources))),
        reference_frame=np.array(reference, dtype=np.int64),
    )
    return {"status": "kept", "reason": None, "arrays": arrays, "mask_source": "+".join(sorted(sources))}
