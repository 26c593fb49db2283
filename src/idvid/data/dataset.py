"""Map-style dataset of identity video clips with face references (see idvid.data.manifest).

Keys are either an int clip index (randomness from draw = index, so validation is fixed) or a
tuple (draw, index) from ResumableRandomSampler. All randomness of an item comes from
np.random.default_rng((seed, draw)), so items do not depend on worker count or order.

An item draws a window of F frames (num_frames at frame_stride) with a face, a reference frame
inside it, and a cross-face reference frame outside its span (from inside when there is none;
then has_cross_ref is False). Frames and masks are centre-cropped to the H:W aspect ratio, then
resized to H x W. References are Rh x Rw: reference_size x reference_size, or H x W when
reference_size is None; their pixels are what idvid.faces.reference_images makes from the frame
(preprocess stored the aligned face, so no step aligns). Points (boxes, keypoints, landmarks) are
pixel coordinates of the image they come with; NaN where the frame has no face, and landmarks
are NaN too where the face backend gives no 68 landmarks (insightface: a whole [68, 2] of NaN).

Batch keys: ``idvid.data.datamodule.collate`` stacks the items' tensors along a new first dim B
and makes lists of length B of the strings. D is the identity embedding width (dlib 128,
insightface 512). Column "sampling": whether ``python -m idvid sample`` gives the key too. Only
the reference's keys and the caption exist at sampling time, so a conditioner that reads any
other key can train but cannot sample. The recipe adds ``used_cross_ref`` and
``ref_image_noisy`` in the training step, after choosing per sample between ref_* and cross_ref_*.

    key                  shape            dtype    sampling  what
    video                [B, F, 3, H, W]  float32  no        the window's frames in [-1, 1]
    face_mask            [B, F, 1, H, W]  float32  no        face masks, {0, 1}
    caption              list[str]        str      yes       the text prompt
    id                   list[str]        str      no        the clip's id in the manifest
    video_key            list[str]        str      no        video file (path, size, mtime) + frame indices
    frame_indices        [B, F]           int64    no        the window's frame numbers in the clip
    frame_has_face       [B, F]           bool     no        the frame has a face (finite keypoints)
    frame_boxes          [B, F, 4]        float32  no        face box x0, y0, x1, y1 in the video's pixels
    frame_kps            [B, F, 5, 2]     float32  no        5 keypoints (ArcFace order) in the video's pixels
    frame_landmarks      [B, F, 68, 2]    float32  no        68 landmarks in the video's pixels
    ref_image            [B, 3, Rh, Rw]   float32  yes       aligned reference face on white, in [-1, 1]
    ref_kps_image        [B, 3, Rh, Rw]   float32  yes       its 5-keypoint drawing on black, in [-1, 1]
    ref_embedding        [B, D]           float32  yes       its L2-normalised identity embedding
    ref_kps              [B, 5, 2]        float32  yes       its 5 keypoints in ref_image's pixels (as drawn)
    ref_landmarks        [B, 68, 2]       float32  yes       its 68 landmarks in ref_image's pixels
    ref_box              [B, 4]           float32  yes       its face box's corners' bounds in ref_image's pixels
    ref_frame            [B]              int64    no        the reference's frame number in the clip
    cross_ref_image      [B, 3, Rh, Rw]   float32  no        as ref_image, from the cross-face frame
    cross_ref_kps_image  [B, 3, Rh, Rw]   float32  no        as ref_kps_image, from the cross-face frame
    cross_ref_embedding  [B, D]           float32  no        as ref_embedding, from the cross-face frame
    cross_ref_kps        [B, 5, 2]        float32  no        as ref_kps, from the cross-face frame
    cross_ref_landmarks  [B, 68, 2]       float32  no        as ref_landmarks, from the cross-face frame
    cross_ref_box        [B, 4]           float32  no        as ref_box, from the cross-face frame
    cross_ref_frame      [B]              int64    no        the cross-face frame's number in the clip
    has_cross_ref        [B]              bool     no        the clip has a face frame outside the window
    frame_eye_boxes      [B, F, 4]        float32  no        both eyes' landmark box x0, y0, x1, y1, video pixels
    frame_mouth_boxes    [B, F, 4]        float32  no        the mouth's landmark box x0, y0, x1, y1, video pixels
    audio_mel            [B, M, L]        float32  no        Whisper log-mel from the first frame on (no audio: 0) *
    audio_frame_times    [B, F]           float32  no        seconds of each frame from audio_mel's start *
    has_audio            [B]              bool     no        the clip has an audio track (else audio_mel is 0) *

Audio (idvid.data.audio): M mel bins (``audio_mel_bins``, 80 for Whisper up to large-v2) and L mel frames
(``audio_mel_frames``, 100 a second; 3000 = Whisper's 30 s) cut from the clip's cached log-mel, which
preprocess stores in the annotations; eye and mouth boxes are NaN where a frame has no 68 landmarks.
* The audio keys are in the batch only when ``audio_mel_frames`` is set (an experiment whose conditioners
read audio sets ``data.audio_mel_frames`` to its audio encoder's window); by default (None) a dataset
builds no audio window.

Prepared clips (frames and masks already at H x W, annotations already loaded) are kept in a
small per-instance LRU cache: fine for short clips; large datasets should train from latent
caches instead.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from idvid.data.audio import mel_window
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import probe_video, read_mp4
from idvid.faces.reference import NUM_LANDMARKS, reference_annotations, sized_reference
from idvid.faces.regions import region_boxes


@dataclass
class PreparedClip:
    """One clip at the dataset's sizes, made when it is loaded so that an item only indexes it.

    video [T, H, W, 3] and masks [T, H, W] uint8; boxes [T, 4], kps [T, 5, 2], landmarks [T, 68, 2]
    float32 in the video's pixels; eye_boxes, mouth_boxes [T, 4] from the landmarks, in the video's pixels;
    audio_mel [M, T_mel] (M x 0 without audio), has_audio, frame_times [T] seconds of each frame;
    the annotations file's other arrays (``annotations``; landmarks as [T, 68, 2], no full-size masks);
    ``references``: frame t's reference (image, keypoint drawing, points) at the reference size, made
    the first time an item uses that frame (most frames never serve as a reference in a large data set).
    """

    video: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    kps: np.ndarray
    landmarks: np.ndarray
    eye_boxes: np.ndarray
    mouth_boxes: np.ndarray
    audio_mel: np.ndarray
    has_audio: bool
    frame_times: np.ndarray
    annotations: dict[str, np.ndarray]
    references: dict[int, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)


class IdentityVideoDataset(Dataset):
    """Clips, face masks, per-frame face annotations and identity references (keys: see the module)."""

    def __init__(
        self,
        manifest_path: str | Path,
        num_frames: int = 9,
        frame_stride: int = 1,
        height: int = 64,
        width: int = 64,
        reference_size: int | None = None,
        seed: int = 0,
        max_cached_clips: int = 32,
        audio_mel_bins: int = 80,
        audio_mel_frames: int | None = None,
    ):
        sizes = {"num_frames": num_frames, "frame_stride": frame_stride, "height": height, "width": width}
        sizes["audio_mel_bins"] = audio_mel_bins
        if audio_mel_frames is not None:
            sizes["audio_mel_frames"] = audio_mel_frames
        if reference_size is not None:
            sizes["reference_size"] = reference_size
        for name, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {seed}")
        self.entries = read_manifest(manifest_path)
        self.num_frames, self.frame_stride = int(num_frames), int(frame_stride)
        self.height, self.width = int(height), int(width)
        self.ref_hw = (int(reference_size),) * 2 if reference_size else (self.height, self.width)
        self.seed = int(seed)
        self.audio_mel_bins = int(audio_mel_bins)
        # None: no audio keys (a window of Whisper's 30 s is ~1 MB an item, for models that read no audio)
        self.audio_mel_frames = None if audio_mel_frames is None else int(audio_mel_frames)
        self.span = (self.num_frames - 1) * self.frame_stride + 1
        self.max_cached_clips = max(1, int(max_cached_clips))
        self._cache: OrderedDict[int, PreparedClip] = OrderedDict()
        # Per clip: which frames have a usable face, and the window starts that contain one.
        self._valid: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._video_keys: list[str] = []
        for entry in self.entries:
            stat = Path(entry["video"]).stat()
            self._video_keys.append(f"{entry['video']}|{stat.st_size}|{stat.st_mtime_ns}")
            ann = load_annotations(entry["annotations"], with_images=False)
            valid = ann["valid"].astype(bool) & np.isfinite(ann["kps"]).all(axis=(1, 2))
            if len(valid) < self.span:
                raise ValueError(
                    f"clip {entry['id']!r} has {len(valid)} frames but num_frames={self.num_frames} at "
                    f"frame_stride={self.frame_stride} needs {self.span}; "
                    "lower num_frames/frame_stride or drop the clip"
                )
            starts = np.array(
                [s for s in range(len(valid) - self.span + 1) if valid[s : s + self.span : self.frame_stride].any()],
                dtype=np.int64,
            )
            if len(starts) == 0:
                raise ValueError(
                    f"clip {entry['id']!r} has no {self.span}-frame window with a detected face; "
                    "drop it from the manifest"
                )
            self._valid.append(valid)
            self._starts.append(starts)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        draw, index = _parse_key(key, len(self))
        entry = self.entries[index]
        clip = self._load(index)
        valid = self._valid[index]
        rng = np.random.default_rng((self.seed, draw))

        start = int(rng.choice(self._starts[index]))
        frame_ids = np.arange(start, start + self.span, self.frame_stride)
        inside = frame_ids[valid[frame_ids]]
        ref_t = int(rng.choice(inside))
        in_span = np.zeros(len(valid), dtype=bool)
        in_span[start : start + self.span] = True
        outside = np.flatnonzero(valid & ~in_span)
        has_cross = len(outside) > 0
        cross_t = int(rng.choice(outside)) if has_cross else int(rng.choice(inside))
        item = {
            "video": to_unit_range(clip.video[frame_ids]),
            "face_mask": torch.from_numpy(clip.masks[frame_ids].astype(np.float32)).unsqueeze(1),
            "caption": entry["caption"],
            "id": entry["id"],
            # Names exactly these frames of this file (for caches of encoder outputs).
            "video_key": f"{self._video_keys[index]}|{','.join(map(str, frame_ids))}",
            "frame_indices": torch.from_numpy(frame_ids),
            "frame_has_face": torch.from_numpy(valid[frame_ids]),
            "frame_boxes": torch.from_numpy(clip.boxes[frame_ids]),
            "frame_kps": torch.from_numpy(clip.kps[frame_ids]),
            "frame_landmarks": torch.from_numpy(clip.landmarks[frame_ids]),
            **self._reference("ref", clip, ref_t),
            "ref_frame": torch.tensor(ref_t),
            **self._reference("cross_ref", clip, cross_t),
            "cross_ref_frame": torch.tensor(cross_t),
            "has_cross_ref": torch.tensor(has_cross),
            "frame_eye_boxes": torch.from_numpy(clip.eye_boxes[frame_ids]),
            "frame_mouth_boxes": torch.from_numpy(clip.mouth_boxes[frame_ids]),
        }
        if self.audio_mel_frames is not None:
            mel, frame_times = mel_window(clip.audio_mel, clip.frame_times[frame_ids], self.audio_mel_frames)
            item["audio_mel"] = torch.from_numpy(mel)
            item["audio_frame_times"] = torch.from_numpy(frame_times)
            item["has_audio"] = torch.tensor(clip.has_audio)
        return item

    def _reference(self, prefix: str, clip: PreparedClip, t: int) -> dict[str, torch.Tensor]:
        """The reference keys of frame t: the stored aligned face resized, its keypoints drawn, its points."""
        ann = clip.annotations
        if t not in clip.references:
            height, width = self.ref_hw
            kps, matrix = ann["kps"][t], ann["reference_matrices"][t]
            image, kps_image = sized_reference(ann["reference_faces"][t], kps, matrix, height, width)
            points = reference_annotations(kps, ann["landmarks"][t], ann["boxes"][t], matrix, height, width)
            clip.references[t] = image, kps_image, points
        image, kps_image, points = clip.references[t]
        return {
            f"{prefix}_image": to_unit_range(image),
            f"{prefix}_kps_image": to_unit_range(kps_image),
            f"{prefix}_embedding": torch.from_numpy(ann["embeddings"][t].astype(np.float32)),
            f"{prefix}_kps": torch.tensor(points["kps"]),  # a copy: items never share memory
            f"{prefix}_landmarks": torch.tensor(points["landmarks"]),
            f"{prefix}_box": torch.tensor(points["box"]),
        }

    def _load(self, index: int) -> PreparedClip:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        clip = self._prepare(index)
        self._cache[index] = clip
        if len(self._cache) > self.max_cached_clips:
            self._cache.popitem(last=False)
        return clip

    def _prepare(self, index: int) -> PreparedClip:
        """Decode the clip and bring every frame, mask and point to the dataset's size, once."""
        entry = self.entries[index]
        frames = read_mp4(entry["video"])
        ann = load_annotations(entry["annotations"])
        if len(frames) != len(ann["valid"]) or frames.shape[1:3] != ann["masks"].shape[1:3]:
            raise ValueError(
                f"clip {entry['id']!r}: video has {len(frames)} frames of {frames.shape[1:3]} but annotations "
                f"describe {len(ann['valid'])} frames with masks of {ann['masks'].shape[1:3]}; re-run preprocessing"
            )
        landmark_count = ann["landmarks"].shape[1]
        if landmark_count not in (0, NUM_LANDMARKS):
            raise ValueError(
                f"clip {entry['id']!r}: annotations hold {landmark_count} landmarks a face; the dataset reads "
                f"{NUM_LANDMARKS} (dlib) or none (insightface); re-run preprocessing with one of those backends"
            )
        ann["landmarks"] = _landmarks68(ann["landmarks"])
        crop = centre_crop_box(*frames.shape[1:3], self.height, self.width)

        def to_video_pixels(points: np.ndarray) -> np.ndarray:  # [T, N, 2] frame pixels -> resized window pixels
            x0, y0, crop_w, crop_h = crop
            scale = np.array([self.width / crop_w, self.height / crop_h], dtype=np.float32)
            return ((points - np.array([x0, y0], dtype=np.float32)) * scale).astype(np.float32)

        # Full-resolution masks are not kept: the cache holds them at H x W only.
        masks = np.stack([fit_to_size(mask, self.height, self.width, cv2.INTER_NEAREST) for mask in ann.pop("masks")])
        landmarks = to_video_pixels(ann["landmarks"])
        eye_boxes, mouth_boxes = region_boxes(landmarks)
        return PreparedClip(
            video=np.stack([fit_to_size(frame, self.height, self.width, cv2.INTER_AREA) for frame in frames]),
            masks=masks,
            boxes=to_video_pixels(ann["boxes"].reshape(-1, 2, 2)).reshape(-1, 4),
            kps=to_video_pixels(ann["kps"]),
            landmarks=landmarks,
            eye_boxes=eye_boxes,
            mouth_boxes=mouth_boxes,
            **self._audio(entry, ann, len(frames)),
            annotations=ann,
        )

    def _audio(self, entry: dict, ann: dict[str, np.ndarray], num_frames: int) -> dict:
        """The clip's cached log-mel, has_audio and frame times (annotations without audio: none, times from fps)."""
        if self.audio_mel_frames is None:  # not asked for audio: nothing to check, decode or keep
            for key in ("has_audio", "audio_mel", "frame_times"):
                ann.pop(key, None)
            return {"audio_mel": np.zeros((self.audio_mel_bins, 0), np.float32), "has_audio": False,
                    "frame_times": np.zeros(0, np.float32)}  # fmt: skip
        has_audio = bool(ann.pop("has_audio", False))
        mel = ann.pop("audio_mel", np.zeros((self.audio_mel_bins, 0), np.float32)).astype(np.float32)
        if has_audio and mel.shape[0] != self.audio_mel_bins:
            raise ValueError(
                f"clip {entry['id']!r}: its cached log-mel has {mel.shape[0]} mel bins but data.audio_mel_bins="
                f"{self.audio_mel_bins}; set data.audio_mel_bins={mel.shape[0]} or re-run preprocess with "
                f"audio_mel_bins={self.audio_mel_bins}"
            )
        if "frame_times" in ann:
            frame_times = ann.pop("frame_times").astype(np.float32)
        else:  # made before audio was kept: the container's frame rate
            fps = probe_video(entry["video"]).fps or 25.0
            frame_times = (np.arange(num_frames) / fps).astype(np.float32)
        if not has_audio:
            mel = np.zeros((self.audio_mel_bins, 0), np.float32)
        return {"audio_mel": mel, "has_audio": has_audio, "frame_times": frame_times}


def _landmarks68(landmarks: np.ndarray) -> np.ndarray:
    """[T, 68, 2] landmarks; all NaN when the backend gave none ([T, 0, 2]), so batches always stack."""
    if landmarks.shape[1] == NUM_LANDMARKS:
        return landmarks.astype(np.float32)
    return np.full((len(landmarks), NUM_LANDMARKS, 2), np.nan, np.float32)


def _parse_key(key: object, length: int) -> tuple[int, int]:
    if isinstance(key, (tuple, list)) and len(key) == 2:
        draw, index = int(key[0]), int(key[1])
    elif isinstance(key, (int, np.integer)):
        draw = index = int(key)
    else:
        raise TypeError(f"dataset key must be an int index or a (draw, index) tuple, got {key!r}")
    if not 0 <= index < length:
        raise IndexError(f"clip index {index} out of range for a dataset of {length} clips")
    if draw < 0:
        raise ValueError(f"draw must be >= 0, got {draw}")
    return draw, index


def centre_crop_box(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, crop width, crop height): the centred window of the height:width aspect ratio."""
    if src_w * height > width * src_h:  # too wide
        new_w = max(1, round(src_h * width / height))
        return (src_w - new_w) // 2, 0, new_w, src_h
    if src_w * height < width * src_h:  # too tall
        new_h = max(1, round(src_w * height / width))
        return 0, (src_h - new_h) // 2, src_w, new_h
    return 0, 0, src_w, src_h


def fit_to_size(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """Centre-crop `image` to the height:width aspect ratio, then resize to (height, width)."""
    x0, y0, crop_w, crop_h = centre_crop_box(*image.shape[:2], height, width)
    return cv2.resize(image[y0 : y0 + crop_h, x0 : x0 + crop_w], (width, height), interpolation=interpolation)


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    # Channels first while still uint8 (a quarter of the bytes to move), then scale in place.
    channels_first = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).contiguous()
    return channels_first.float().div_(127.5).sub_(1.0)
