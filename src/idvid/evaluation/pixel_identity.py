"""An identity score that works where face recognisers do not: pixel correlation of the face region to the reference.

At toy scale (64x64 frames, faces ~30 px) no face embedder is meaningful, but the generated face can
still be compared with the reference pixel by pixel. For each sampled frame the face region (the
frame's detected face, else the reference's face box mapped to the frame's size: the toy set's
camera keeps the face near where the reference shows it) is cut out, made grey, resized to
``size`` and split with the FFT into the frequency analysis' bands (``frequency.low_band`` /
``high_band`` of Nyquist, the same edges as the spectra). The columns are the Pearson correlations
with the reference's face region, over the whole crop and per band, averaged over the frames:

- ``pixid``, ``pixid_low``, ``pixid_high``: correlation with the video's own reference;
- set level ``pixid_margin`` (and ``_low`` / ``_high``): own-reference correlation minus the mean
  correlation with the OTHER references of the set, so that a face that merely looks like an average
  face (or like every reference) scores zero and only identity-specific resemblance counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from idvid.evaluation import frequency
from idvid.evaluation.metrics import Metric, VideoContext
from idvid.faces import Face
from idvid.registry import register_metric

BANDS = ("full", "low", "high")


def face_region(image: np.ndarray, box: tuple[float, float, float, float], size: int, margin: float = 1.3):
    """The square around ``box`` (side ``margin`` x its larger side), grey, resized to ``size`` (float64)."""
    x0, y0, x1, y1 = box
    side = margin * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
    crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return frequency.grey(crop)


def band_images(grey: np.ndarray, config: frequency.FrequencyConfig) -> dict[str, np.ndarray]:
    """The crop's mean-free image and its low- and high-band parts (ideal radial filters on the FFT)."""
    grey = grey - grey.mean()
    height, width = grey.shape
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    radius = np.hypot(fy, fx) / 0.5  # fraction of Nyquist
    spectrum = np.fft.fft2(grey)
    low = np.real(np.fft.ifft2(spectrum * (radius <= config.low_band)))
    high = np.real(np.fft.ifft2(spectrum * (radius >= config.high_band)))
    return {"full": grey, "low": low, "high": high}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


@register_metric("pixel_identity")
class PixelIdentity(Metric):
    """Face-region pixel correlation to the reference, full and per frequency band, and its margin over others."""

    name = "pixel_identity"

    def __init__(self, config: frequency.FrequencyConfig, size: int = 32):
        self.config, self.size = config, size
        self.generated: list[list[dict[str, np.ndarray]]] = []  # per video: band images of each frame
        self.references: list[dict[str, np.ndarray]] = []
        self.reference_keys: list[bytes] = []

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "PixelIdentity":
        settings = {k: v for k, v in cfg["frequency"].items() if k in ("low_band", "high_band")}
        return cls(frequency.FrequencyConfig(**settings), int(cfg.get("pixel_identity", {}).get("size", 32)))

    def _frame_box(self, frame: np.ndarray, face: Face | None, ctx: VideoContext) -> tuple[float, ...]:
        if face is not None:
            return face.box
        ref_h, ref_w = ctx.reference_image.shape[:2]
        sx, sy = frame.shape[1] / ref_w, frame.shape[0] / ref_h
        x0, y0, x1, y1 = ctx.reference_face.box
        return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        reference = band_images(face_region(ctx.reference_image, ctx.reference_face.box, self.size), self.config)
        frames = [
            band_images(face_region(frame, self._frame_box(frame, face, ctx), self.size), self.config)
            for frame, face in zip(ctx.sampled, ctx.faces)
        ]
        self.generated.append(frames)
        self.references.append(reference)
        self.reference_keys.append(np.ascontiguousarray(ctx.reference_image).tobytes())
        return {_column("pixid", band): self._score(frames, reference, band) for band in BANDS}

    @staticmethod
    def _score(frames: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray], band: str) -> float:
        return float(np.mean([correlation(frame[band], reference[band]) for frame in frames]))

    def finish(self, out: Path) -> dict[str, Any]:
        margins: dict[str, list[float]] = {band: [] for band in BANDS}
        for index, frames in enumerate(self.generated):
            # other identities only: the same reference image repeated (another sampling seed) is not "other"
            others = [j for j, key in enumerate(self.reference_keys) if key != self.reference_keys[index]]
            if not others:
                continue
            for band in BANDS:
                own = self._score(frames, self.references[index], band)
                rest = np.mean([self._score(frames, self.references[j], band) for j in others])
                margins[band].append(own - float(rest))
        if not margins["full"]:
            return {}
        return {_column("pixid_margin", band): float(np.mean(values)) for band, values in margins.items()}


def _column(prefix: str, band: str) -> str:
    return prefix if band == "full" else f"{prefix}_{band}"
