"""Map-style dataset of identity video clips with face references (see idvid.data.manifest)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4
from idvid.faces.reference import reference_images


class IdentityVideoDataset(Dataset):
    """Clips, face masks and identity references for identity-preserving video training.

    Keys are either an int clip index (randomness from draw = index, so validation is fixed)
    or a tuple (draw, index) from ResumableRandomSampler. All randomness of an item comes from
    np.random.default_rng((seed, draw)), so items do not depend on worker count or order.

    Each item holds (float32 tensors in [-1, 1] unless said otherwise):
      video [F,3,H,W]; face_mask [F,1,H,W] in {0,1}; caption, id (str);
      ref_image, ref_kps_image [3,R,R]; ref_embedding [D]: from a random face frame inside the clip;
      cross_ref_image, cross_ref_kps_image, cross_ref_embedding: the same from a face frame outside
      the clip's frame span, or from inside when there is none (then has_cross_ref is False);
      has_cross_ref (bool); frame_indices [F], ref_frame, cross_ref_frame (int64, source frame numbers);
      video_key (str): the video file (path, size, mtime) and frame indices, for encoder caches.
    Frames and masks are centre-cropped to the H:W aspect ratio, then resized to HxW.
    R x R is reference_size x reference_size, or H x W when reference_size is None.

    Decoded clips are kept in a small per-instance LRU cache: fine for short clips; large
    datasets should train from latent caches instead.
    """

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
    ):
        sizes = {"num_frames": num_frames, "frame_stride": frame_stride, "height": height, "width": width}
        for name, value in sizes.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seeds are non-negative), got {seed}")
        self.entries = read_manifest(manifest_path)
        self.num_frames, self.frame_stride = int(num_frames), int(frame_stride)
        self.height, self.width = int(height), int(width)
        self.ref_hw = (reference_size, reference_size) if reference_size else (self.height, self.width)
        self.seed = int(seed)
        self.span = (self.num_frames - 1) * self.frame_stride + 1
        self.max_cached_clips = max(1, int(max_cached_clips))
        self._cache: OrderedDict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = OrderedDict()
        # Per clip: which frames have a usable face, and the window starts that contain one.
        self._valid: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._video_keys: list[str] = []
        for entry in self.entries:
            stat = Path(entry["video"]).stat()
            self._video_keys.append(f"{entry['video']}|{stat.st_size}|{stat.st_mtime_ns}")
            ann = load_annotations(entry["annotations"], with_masks=False)
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
        frames, ann = self._load(index)
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

        video = np.stack([_fit(frames[t], self.height, self.width, cv2.INTER_AREA) for t in frame_ids])
        masks = np.stack([_fit(ann["masks"][t], self.height, self.width, cv2.INTER_NEAREST) for t in frame_ids])
        ref_image, ref_kps = self._reference(frames[ref_t], ann["kps"][ref_t], ann["masks"][ref_t])
        cross_image, cross_kps = self._reference(frames[cross_t], ann["kps"][cross_t], ann["masks"][cross_t])
        return {
            "video": _to_unit_range(video),
            "face_mask": torch.from_numpy(masks.astype(np.float32)).unsqueeze(1),
            "caption": entry["caption"],
            "id": entry["id"],
            "ref_image": _to_unit_range(ref_image),
            "ref_kps_image": _to_unit_range(ref_kps),
            "ref_embedding": torch.from_numpy(ann["embeddings"][ref_t].astype(np.float32)),
            "cross_ref_image": _to_unit_range(cross_image),
            "cross_ref_kps_image": _to_unit_range(cross_kps),
            "cross_ref_embedding": torch.from_numpy(ann["embeddings"][cross_t].astype(np.float32)),
            "has_cross_ref": torch.tensor(has_cross),
            "frame_indices": torch.from_numpy(frame_ids),
            # Names exactly these frames of this file (for caches of encoder outputs).
            "video_key": f"{self._video_keys[index]}|{','.join(map(str, frame_ids))}",
            "ref_frame": torch.tensor(ref_t),
            "cross_ref_frame": torch.tensor(cross_t),
        }

    def _reference(self, frame: np.ndarray, kps: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return reference_images(frame, kps, mask, *self.ref_hw)

    def _load(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        entry = self.entries[index]
        frames = read_mp4(entry["video"])
        ann = load_annotations(entry["annotations"])
        if len(frames) != len(ann["valid"]) or frames.shape[1:3] != ann["masks"].shape[1:3]:
            raise ValueError(
                f"clip {entry['id']!r}: video has {len(frames)} frames of {frames.shape[1:3]} but annotations "
                f"describe {len(ann['valid'])} frames with masks of {ann['masks'].shape[1:3]}; re-run preprocessing"
            )
        self._cache[index] = (frames, ann)
        if len(self._cache) > self.max_cached_clips:
            self._cache.popitem(last=False)
        return frames, ann


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


def _fit(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    """Centre-crop `image` to the height:width aspect ratio, then resize to (height, width)."""
    src_h, src_w = image.shape[:2]
    if src_w * height > width * src_h:  # too wide
        new_w = max(1, round(src_h * width / height))
        x0 = (src_w - new_w) // 2
        image = image[:, x0 : x0 + new_w]
    elif src_w * height < width * src_h:  # too tall
        new_h = max(1, round(src_w * height / width))
        y0 = (src_h - new_h) // 2
        image = image[y0 : y0 + new_h]
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    return tensor.movedim(-1, -3).contiguous()
