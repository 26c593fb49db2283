"""Quality metrics of a video's main face track and the filters that keep or drop the video.

The filters follow MegActor-Sigma's data curation (effective face resolution, a single face,
head rotation from landmarks with a 30 degree mean limit, distance to the frame edge, motion, and
lip sync: SyncNet's Sync-C > 6 and Sync-D < 8.5, see idvid.evaluation.syncnet) and ConsisID's (a face
in most frames, clips long enough for the training window).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from idvid.preprocess.tracking import FaceAnalysis

# Where the nose tip sits between the eye line and the mouth line on a frontal face (ArcFace template).
FRONTAL_NOSE_HEIGHT = 0.494


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds; a video is dropped when any is violated. None switches a filter off.

    min_face_size: median face box side (sqrt of the area) in pixels.
    max_second_face_ratio: median, over frames, of the largest other face's area / the main face's.
    min_valid_fraction: share of sampled frames in which the main face was found.
    max_rotation_deg: mean head rotation (largest of |yaw|, |pitch|, |roll|) over the main face.
    min_edge_distance: median distance of the face box from the nearest frame edge / shorter frame side.
    min_motion_ratio, max_motion_ratio: mean face-centre speed per frame / face width.
    min_sync_confidence, max_sync_distance: SyncNet's Sync-C and Sync-D of the kept clip against its audio
    (MegActor-Sigma: 6 and 8.5); they need SyncNet's weights (preprocess's syncnet_weights) and skip clips
    without audio (kept for visual-only training).
    """

    min_face_size: float | None = 128.0
    max_second_face_ratio: float | None = 0.5
    min_valid_fraction: float | None = 0.8
    max_rotation_deg: float | None = 30.0
    min_edge_distance: float | None = 0.0
    min_motion_ratio: float | None = None
    max_motion_ratio: float | None = 0.5
    min_sync_confidence: float | None = None
    max_sync_distance: float | None = None

    @property
    def checks_lip_sync(self) -> bool:
        return self.min_sync_confidence is not None or self.max_sync_distance is not None


def head_pose_deg(kps: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from 5 ArcFace-order keypoints.

    Roll is the eye line's angle. After undoing it, yaw is how far the nose tip sits sideways
    from the eye-mouth midline, and pitch how far it sits up or down from its frontal height,
    both against the half eye distance, taken as the nose's depth in front of the eyes (about
    equal on adult faces). A rough but monotonic estimate: 0 for the ArcFace template.
    """
    kps = np.asarray(kps, dtype=np.float64)
    left_eye, right_eye = kps[0], kps[1]
    eye_line = right_eye - left_eye
    roll = float(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
    cos, sin = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    upright = (kps - kps.mean(0)) @ np.array([[cos, -sin], [sin, cos]])
    left_eye, right_eye, nose, left_mouth, right_mouth = upright
    half_eye = max((right_eye[0] - left_eye[0]) / 2.0, 1e-6)
    eyes, mouth = (left_eye + right_eye) / 2.0, (left_mouth + right_mouth) / 2.0
    yaw = float(np.degrees(np.arctan2(nose[0] - (eyes[0] + mouth[0]) / 2.0, half_eye)))
    span = mouth[1] - eyes[1]
    nose_height = (nose[1] - eyes[1]) / span if abs(span) > 1e-6 else FRONTAL_NOSE_HEIGHT
    pitch = float(np.degrees(np.arctan2((nose_height - FRONTAL_NOSE_HEIGHT) * span, half_eye)))
    return yaw, pitch, roll


def rotation_deg(kps: np.ndarray) -> float:
    """How far a face is turned from frontal: the largest of |yaw|, |pitch|, |roll|."""
    return float(np.max(np.abs(head_pose_deg(kps))))


def main_track(analysis: FaceAnalysis) -> int | None:
    """The track with the most face area summed over frames (present longest and largest), or None."""
    if len(analysis.track) == 0:
        return None
    areas = (analysis.box[:, 2] - analysis.box[:, 0]) * (analysis.box[:, 3] - analysis.box[:, 1])
    totals = {t: float(areas[analysis.track == t].sum()) for t in analysis.track_ids()}
    return max(totals, key=totals.get)


def track_metrics(analysis: FaceAnalysis, track: int) -> dict[str, float]:
    """Every filter's metric for `track` (see FilterSettings), plus its frame span."""
    mine = np.flatnonzero(analysis.track == track)
    box = analysis.box[mine]
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    areas = width * height
    all_areas = (analysis.box[:, 2] - analysis.box[:, 0]) * (analysis.box[:, 3] - analysis.box[:, 1])
    second = []
    for t, area in zip(analysis.frame[mine], areas):
        others = all_areas[(analysis.frame == t) & (analysis.track != track)]
        second.append(float(others.max(initial=0.0)) / max(float(area), 1e-6))
    margins = np.minimum.reduce([box[:, 0], box[:, 1], analysis.width - box[:, 2], analysis.height - box[:, 3]]) / min(
        analysis.width, analysis.height
    )
    centres = (box[:, :2] + box[:, 2:]) / 2.0
    frames = analysis.frame[mine]
    if len(mine) > 1:
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(np.diff(frames), 1)
        motion = float(np.mean(steps / np.maximum((width[1:] + width[:-1]) / 2.0, 1e-6)))
    else:
        motion = 0.0
    return {
        "face_size": float(np.median(np.sqrt(areas))),
        "second_face_ratio": float(np.median(second)),
        "valid_fraction": float(len(np.unique(frames)) / max(len(analysis.sampled), 1)),
        "rotation_deg": float(np.mean([rotation_deg(k) for k in analysis.kps[mine]])),
        "edge_distance": float(np.median(margins)),
        "motion_ratio": motion,
        "first_frame": int(frames.min()),
        "last_frame": int(frames.max()),
        "length": int(frames.max() - frames.min() + 1),
        "num_faces": int(len(analysis.track_ids())),
    }


def failed_filters(metrics: dict[str, float], filters: FilterSettings, min_length: int) -> list[tuple[str, str]]:
    """(skip reason, detail) for every violated threshold, most fundamental first; [] keeps the video."""
    checks = [
        ("several_faces", "second_face_ratio", "max_second_face_ratio"),
        ("few_face_frames", "valid_fraction", "min_valid_fraction"),
        ("too_short", "length", "min_length"),
        ("small_face", "face_size", "min_face_size"),
        ("head_rotation", "rotation_deg", "max_rotation_deg"),
        ("near_edge", "edge_distance", "min_edge_distance"),
        ("too_static", "motion_ratio", "min_motion_ratio"),
        ("too_much_motion", "motion_ratio", "max_motion_ratio"),
    ]
    return _violations(metrics, {**asdict(filters), "min_length": min_length}, checks)


def failed_sync_filters(metrics: dict[str, float], filters: FilterSettings) -> list[tuple[str, str]]:
    """(skip reason, detail) for the violated lip-sync thresholds (metrics: sync_confidence, sync_distance)."""
    checks = [("lip_sync_confidence", "sync_confidence", "min_sync_confidence"),
              ("lip_sync_distance", "sync_distance", "max_sync_distance")]  # fmt: skip
    return _violations(metrics, asdict(filters), checks)


def _violations(metrics: dict[str, float], limits: dict, checks: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    failed = []
    for reason, metric, setting in checks:
        limit, value = limits[setting], metrics[metric]
        if limit is None:
            continue
        if (setting.startswith("min") and value < limit) or (setting.startswith("max") and value > limit):
            relation = "<" if setting.startswith("min") else ">"
            # Name the config value that decides, so the fix is one override away.
            key = "clip.num_frames x clip.frame_stride" if setting == "min_length" else f"filters.{setting}"
            failed.append((reason, f"{metric} {value:.3g} {relation} {limit:g} (set by {key})"))
    return failed
