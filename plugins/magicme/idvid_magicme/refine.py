"""Magic-Me's video-to-video refinement, Face VCD and Tiled VCD, on any kit model that samples.

Both re-denoise part of a video partially (SDEdit, ``IdentityVideoModule.generate(init_video=...,
strength=...)``) and put the result back:

* ``refine_face`` (Face VCD): the face is detected in every frame, a face-centred crop of the model's
  aspect follows it (smoothed across frames), is resized to the model's resolution, re-denoised, and
  pasted back with a feathered mask; frames without a face are left as they are.
* ``refine_tiled`` (Tiled VCD): the video is upscaled, split into overlapping tiles, each tile is
  re-denoised, and the overlaps are blended with weights that fall off towards each tile's edges.

``SDEditDenoiser`` is the re-denoising step both share: clips of any length go through the model in
windows of its frame count. Videos here are ``[T, H, W, 3]`` uint8 (what ``read_mp4`` gives).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from idvid.errors import ConfigError, UserError

log = logging.getLogger(__name__)

#: a clip ``[F, 3, h, w]`` in [-1, 1] -> the same clip re-denoised
Denoise = Callable[[torch.Tensor], torch.Tensor]


class SDEditDenoiser:
    """Partial re-denoising of clips with one model: noised to ``strength``, denoised with the same conditions.

    ``make_batch(height, width)`` gives the model's sampling inputs for clips of that size (the caption and,
    for methods with reference conditions, the reference photo's). A clip longer than the model's default
    frame count goes through in windows of it; a shorter (last) window is padded with its last frame
    to the next frame count the backbone takes. ``progress``: a bar of the denoising steps of each window.
    """

    def __init__(
        self,
        module: Any,
        make_batch: Callable[[int, int], Mapping[str, Any]],
        strength: float,
        steps: int = 50,
        guidance: float = 6.0,
        seed: int = 0,
        noise_prior: Mapping[str, Any] | str | None = None,
        progress: bool = False,
    ):
        self.module, self.make_batch, self.strength, self.progress = module, make_batch, strength, progress
        self.steps, self.guidance, self.seed, self.noise_prior = steps, guidance, seed, noise_prior
        self.window = module.backbone.default_video_size[0]
        self.temporal = module.backbone.info.vae_temporal_compression

    def windows(self, num_frames: int) -> list[tuple[int, int, int]]:
        """(start, frames taken, frames the model runs) of each window of a clip."""
        spans = []
        for start in range(0, num_frames, self.window):
            taken = min(self.window, num_frames - start)
            spans.append((start, taken, 1 + math.ceil((taken - 1) / self.temporal) * self.temporal))
        return spans

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        frames, _, height, width = clip.shape
        batch = self.make_batch(height, width)
        refined = []
        for start, taken, run in self.windows(frames):
            part = clip[start : start + taken]
            part = torch.cat([part, part[-1:].expand(run - taken, -1, -1, -1)])
            out = self.module.generate(
                batch,
                run,
                height,
                width,
                self.steps,
                self.guidance,
                seed=self.seed,
                noise_prior=self.noise_prior,
                init_video=part[None],
                strength=self.strength,
                progress=self.progress,
            )
            refined.append(out[0, :taken].float().cpu())
        return torch.cat(refined)


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """``[T, H, W, 3]`` uint8 -> ``[T, 3, H, W]`` float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` in [-1, 1] -> ``[T, H, W, 3]`` uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------- Face VCD
def track_faces(frames: np.ndarray, analyzer: Any) -> list[tuple[float, float, float, float] | None]:
    """The face box of each frame (None where there is none): the largest at first, then the one nearest the last."""
    boxes: list[tuple[float, float, float, float] | None] = []
    last = None
    for frame in frames:
        faces = analyzer.detect(np.ascontiguousarray(frame))
        if not faces:
            boxes.append(None)
            continue
        if last is None:
            chosen = faces[0]  # backends list the largest first
        else:
            chosen = min(faces, key=lambda f: np.hypot(*(_centre(f.box) - _centre(last))))
        last = tuple(float(v) for v in chosen.box)
        boxes.append(last)
    return boxes


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def face_crops(
    boxes: list[tuple[float, float, float, float] | None],
    frame_hw: tuple[int, int],
    out_hw: tuple[int, int],
    context: float = 1.8,
    smoothing: int = 5,
) -> np.ndarray:
    """Crop boxes ``[T, 4]`` (x0, y0, x1, y1; ints) of one size and the model's aspect, centred on the face.

    The crop is ``context`` times the largest face side (the head and some background), the centres are
    a moving average over ``smoothing`` frames (no jitter), and frames without a face take the nearest
    face's centre. Crops stay inside the frame.
    """
    found = [i for i, box in enumerate(boxes) if box is not None]
    height, width = frame_hw
    aspect = out_hw[1] / out_hw[0]
    side = context * max(max(b[2] - b[0], b[3] - b[1]) for b in boxes if b is not None)
    crop_h, crop_w = side, side * aspect
    shrink = min(1.0, height / crop_h, width / crop_w)  # a crop never leaves the frame
    crop_h, crop_w = max(2, int(crop_h * shrink)), max(2, int(crop_w * shrink))
    centres = np.stack([_centre(boxes[min(found, key=lambda j: abs(j - i))]) for i in range(len(boxes))])
    kernel = np.ones(smoothing) / smoothing
    padded = np.pad(centres, ((smoothing // 2, smoothing - 1 - smoothing // 2), (0, 0)), mode="edge")
    smoothed = np.stack([np.convolve(padded[:, axis], kernel, mode="valid") for axis in range(2)], axis=1)
    x0 = np.clip(np.round(smoothed[:, 0] - crop_w / 2), 0, width - crop_w).astype(int)
    y0 = np.clip(np.round(smoothed[:, 1] - crop_h / 2), 0, height - crop_h).astype(int)
    return np.stack([x0, y0, x0 + crop_w, y0 + crop_h], axis=1)


def feathered_mask(height: int, width: int, feather: float = 0.2) -> np.ndarray:
    """float32 ``[height, width]``: 1 inside, falling linearly to 0 at the border over ``feather`` of each side."""
    if not 0.0 < feather <= 0.5:
        raise ConfigError(
            f"feather={feather} is not in (0, 0.5].", "It is the share of each side that fades (e.g. 0.2)."
        )

    def ramp(n: int) -> np.ndarray:
        edge = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)  # 0 on the border
        return np.clip(edge / max(1.0, feather * n), 0, 1)

    return np.outer(ramp(height), ramp(width))


def refine_face(
    frames: np.ndarray,
    denoise: Denoise,
    analyzer: Any,
    model_hw: tuple[int, int],
    context: float = 1.8,
    feather: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Face VCD: (refined frames ``[T, H, W, 3]`` uint8, the paste mask ``[T, H, W]`` float32 used per frame)."""
    boxes = track_faces(frames, analyzer)
    missing = sum(box is None for box in boxes)
    if missing == len(boxes):
        raise UserError(
            f"refine --mode face: no face in any of the video's {len(boxes)} frames.",
            "Give a video with a clearly visible face (the face backend: face=dlib|insightface), or use --mode tiled.",
        )
    if missing:
        log.warning("refine: %d of %d frames have no face; they are left as they are", missing, len(boxes))
    crops = face_crops(boxes, frames.shape[1:3], model_hw, context)
    model_h, model_w = model_hw
    cropped = np.stack(
        [
            cv2.resize(frame[y0:y1, x0:x1], (model_w, model_h), interpolation=cv2.INTER_AREA)
            for frame, (x0, y0, x1, y1) in zip(frames, crops)
        ]
    )
    refined = to_uint8(denoise(to_unit(cropped)))
    crop_h, crop_w = int(crops[0, 3] - crops[0, 1]), int(crops[0, 2] - crops[0, 0])
    feather_mask = feathered_mask(crop_h, crop_w, feather)[..., None]
    out = frames.copy()
    masks = np.zeros(frames.shape[:3], np.float32)
    for i, (x0, y0, x1, y1) in enumerate(crops):
        if boxes[i] is None:
            continue
        back = cv2.resize(refined[i], (crop_w, crop_h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        region = out[i, y0:y1, x0:x1].astype(np.float32)
        out[i, y0:y1, x0:x1] = np.round(region + feather_mask * (back - region)).astype(np.uint8)
        masks[i, y0:y1, x0:x1] = feather_mask[..., 0]
    return out, masks


# ------------------------------------------------------------------------------------ Tiled VCD
def tile_starts(length: int, tile: int, count: int) -> list[int]:
    """``count`` evenly spread tile starts covering ``length`` (first at 0, last ending at ``length``)."""
    if count == 1:
        return [0]
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def default_tile(length: int, count: int, overlap: float, multiple: int) -> int:
    """The tile side that splits ``length`` into ``count`` tiles overlapping by ``overlap`` of a tile."""
    side = length / (count - (count - 1) * overlap) if count > 1 else length
    return min(length // multiple * multiple, math.ceil(side / multiple) * multiple)


def blend_weights(height: int, width: int, overlap_hw: tuple[int, int]) -> torch.Tensor:
    """``[height, width]``, positive everywhere, falling linearly towards each side over that side's overlap."""

    def ramp(n: int, fade: int) -> torch.Tensor:
        edge = torch.minimum(torch.arange(n), torch.arange(n).flip(0)).float() + 0.5
        return (edge / max(fade, 1)).clamp(max=1.0)

    return torch.outer(ramp(height, overlap_hw[0]), ramp(width, overlap_hw[1]))


def refine_tiled(
    frames: np.ndarray,
    denoise: Denoise,
    scale: float = 2.0,
    grid: tuple[int, int] = (2, 2),
    tile_hw: tuple[int, int] | None = None,
    overlap: float = 0.25,
    multiple: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Tiled VCD: the video upscaled by ``scale`` per side, re-denoised tile by tile, overlaps blended.

    ``tile_hw`` defaults to the size that splits the upscaled video into ``grid`` (rows, columns) tiles
    overlapping by ``overlap`` of a tile, rounded up to ``multiple`` (the sizes the backbone takes).
    """
    video = to_unit(frames)
    height, width = round(video.shape[2] * scale), round(video.shape[3] * scale)
    upscaled = F.interpolate(video, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
    rows, cols = grid
    if tile_hw is None:
        tile_hw = (default_tile(height, rows, overlap, multiple), default_tile(width, cols, overlap, multiple))
    tile_h, tile_w = tile_hw
    if tile_h > height or tile_w > width:
        raise ConfigError(
            f"refine --mode tiled: tiles of {tile_h}x{tile_w} are larger than the upscaled video ({height}x{width}).",
            "Give a smaller --tile HxW (or none: it follows from --tiles and --overlap), or a larger --scale.",
        )
    if tile_h * rows < height or tile_w * cols < width:
        raise ConfigError(
            f"refine --mode tiled: {rows}x{cols} tiles of {tile_h}x{tile_w} do not cover the upscaled video "
            f"({height}x{width}).",
            "Give more --tiles or a larger --tile.",
        )
    ys, xs = tile_starts(height, tile_h, rows), tile_starts(width, tile_w, cols)
    overlap_hw = (tile_h - (ys[1] - ys[0]) if rows > 1 else 0, tile_w - (xs[1] - xs[0]) if cols > 1 else 0)
    weights = blend_weights(tile_h, tile_w, overlap_hw)
    total = torch.zeros_like(upscaled)
    weight_sum = torch.zeros(height, width)
    positions = [(y, x) for y in ys for x in xs]
    for y, x in tqdm(positions, desc=f"tiles of {tile_h}x{tile_w}", disable=not progress):
        refined = denoise(upscaled[:, :, y : y + tile_h, x : x + tile_w])
        total[:, :, y : y + tile_h, x : x + tile_w] += refined * weights
        weight_sum[y : y + tile_h, x : x + tile_w] += weights
    return to_uint8(total / weight_sum)


__all__ = [
    "SDEditDenoiser",
    "blend_weights",
    "face_crops",
    "feathered_mask",
    "refine_face",
    "refine_tiled",
    "tile_starts",
    "track_faces",
]
