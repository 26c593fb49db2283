"""Frequency analysis of face regions (ConsisID Fig. 3): Fourier log-amplitude spectra and radial profiles.

Each face region is cut out at a fixed size (the aligned face, or the bounding box of a face mask),
turned to grey, its mean removed, and its centred 2-D Fourier log-amplitude ``log(1 + |FFT|)``
computed; spectra are averaged over frames (and over videos for a set). The radial profile is the
mean log-amplitude on rings of equal frequency radius, radius 0 (DC) to the Nyquist radius.
Band amplitudes are means of the profile over normalised radii ``r / r_nyquist``: the low band is
``(0, low_band]``, the high band ``[high_band, 1]``; the edges are config.

Pictures are written with OpenCV (no plotting library needed): a colour-mapped spectrum, and a
profile plot with the band edges drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch

from idvid.evaluation.identity import arcface_crop
from idvid.faces import Face

PLOT_COLOURS_BGR = (
    (200, 80, 30),
    (40, 40, 220),
    (40, 160, 40),
    (160, 60, 160),
    (20, 150, 220),
    (120, 120, 0),
    (0, 0, 0),
)


@dataclass(frozen=True)
class FrequencyConfig:
    """crop_size: side of the face region in pixels; low_band / high_band: band edges as fractions of Nyquist."""

    crop_size: int = 128
    low_band: float = 0.25
    high_band: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.low_band <= self.high_band < 1:
            raise ValueError(
                f"band edges must satisfy 0 < low_band <= high_band < 1, got low_band={self.low_band}, "
                f"high_band={self.high_band}; e.g. frequency.low_band=0.25 frequency.high_band=0.5"
            )
        if self.crop_size < 8:
            raise ValueError(f"frequency.crop_size={self.crop_size} is too small; use at least 8 (e.g. 128)")


def log_amplitude_spectrum(gray: np.ndarray) -> np.ndarray:
    """Centred ``log(1 + |FFT2|)`` of a grey image (its mean removed, so DC carries no brightness)."""
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2:
        raise ValueError(f"expected a grey image [H, W], got shape {gray.shape}")
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))))


def radial_profile(spectrum: np.ndarray) -> np.ndarray:
    """Mean of a centred spectrum on integer-radius rings, radius 0 .. min(H, W) // 2."""
    height, width = spectrum.shape
    y, x = np.indices(spectrum.shape)
    radius = np.rint(np.hypot(y - height // 2, x - width // 2)).astype(int)
    limit = min(height, width) // 2
    inside = radius <= limit
    sums = np.bincount(radius[inside], weights=spectrum[inside], minlength=limit + 1)
    counts = np.bincount(radius[inside], minlength=limit + 1)
    return sums / np.maximum(counts, 1)


def band_amplitudes(profile: np.ndarray, config: FrequencyConfig) -> dict[str, float]:
    """Mean log-amplitude of the low and high band, and their difference (high - low)."""
    nyquist = len(profile) - 1
    normalised = np.arange(len(profile)) / nyquist
    low = float(profile[(normalised > 0) & (normalised <= config.low_band)].mean())
    high = float(profile[normalised >= config.high_band].mean())
    return {"freq_low": low, "freq_high": high, "freq_high_minus_low": high - low}


def grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float64)


def face_crops(frames: Sequence[np.ndarray], faces: Sequence[Face | None], size: int) -> list[np.ndarray]:
    """Aligned face crops (RGB) of the frames that have a face."""
    return [arcface_crop(frame, face, size) for frame, face in zip(frames, faces) if face is not None]


def mask_crops(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """The bounding box of each non-empty mask, cut from its frame and resized to ``size`` (RGB)."""
    crops = []
    for frame, mask in zip(frames, masks):
        ys, xs = np.nonzero(np.asarray(mask) > 0.5)
        if len(ys) == 0:
            continue
        box = frame[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        crops.append(cv2.resize(np.ascontiguousarray(box), (size, size), interpolation=cv2.INTER_AREA))
    return crops


def mean_spectrum(crops: Sequence[np.ndarray]) -> np.ndarray:
    """The log-amplitude spectrum averaged over RGB crops of one size."""
    if not crops:
        raise ValueError("no face region to analyse (no frame had a face)")
    return np.mean([log_amplitude_spectrum(grey(crop)) for crop in crops], axis=0)


# ------------------------------------------------------------------ pictures


def spectrum_image(spectrum: np.ndarray, scale: int = 2) -> np.ndarray:
    """RGB uint8 picture of a spectrum (colour map over its own min..max), enlarged ``scale`` times."""
    low, high = float(spectrum.min()), float(spectrum.max())
    normalised = ((spectrum - low) / max(high - low, 1e-12) * 255).astype(np.uint8)
    picture = cv2.applyColorMap(normalised, cv2.COLORMAP_VIRIDIS)
    picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


def profile_plot(
    profiles: Mapping[str, np.ndarray], config: FrequencyConfig, size: tuple[int, int] = (360, 560)
) -> np.ndarray:
    """RGB uint8 line plot of radial profiles against normalised frequency, band edges drawn grey."""
    height, width = size
    left, right, top, bottom = 60, 20, 20, 45
    canvas = np.full((height, width, 3), 255, np.uint8)
    values = np.concatenate([p[1:] for p in profiles.values()])  # DC is 0 after mean removal: leave it out
    y_low, y_high = float(values.min()), float(values.max())
    y_span = max(y_high - y_low, 1e-9)

    def to_pixel(fraction: float, value: float) -> tuple[int, int]:
        x = left + fraction * (width - left - right)
        y = height - bottom - (value - y_low) / y_span * (height - top - bottom)
        return int(round(x)), int(round(y))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    for edge in (config.low_band, config.high_band):
        cv2.line(canvas, to_pixel(edge, y_low), to_pixel(edge, y_high), (170, 170, 170), 1)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = to_pixel(tick, y_low)
        cv2.putText(canvas, f"{tick:g}", (x - 10, height - bottom + 16), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "frequency / Nyquist", (width // 2 - 70, height - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for value in (y_low, (y_low + y_high) / 2, y_high):
        _, y = to_pixel(0.0, value)
        cv2.putText(canvas, f"{value:.2f}", (5, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for index, (label, profile) in enumerate(profiles.items()):
        colour = PLOT_COLOURS_BGR[index % len(PLOT_COLOURS_BGR)]
        fractions = np.arange(len(profile)) / (len(profile) - 1)
        points = np.array([to_pixel(f, v) for f, v in zip(fractions[1:], profile[1:])], np.int32)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, label, (width - right - 150, top + 18 + 16 * index), font, 0.45, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, "log amplitude", (left, top - 6), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def side_by_side(images: Mapping[str, np.ndarray], label_height: int = 24) -> np.ndarray:
    """RGB pictures of one height in a row, each with its label above it."""
    tiles = []
    for label, image in images.items():
        banner = np.full((label_height, image.shape[1], 3), 255, np.uint8)
        cv2.putText(banner, label, (4, label_height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([banner, image], axis=0))
    return np.concatenate(tiles, axis=1)


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


# ------------------------------------------------------------ training hook


def log_validation_spectra(
    writer, tag: str, video: torch.Tensor, face_mask: torch.Tensor, step: int, config: FrequencyConfig
) -> dict[str, float] | None:
    """Log the face-region spectrum and profile of generated videos to TensorBoard; returns the band amplitudes.

    video: ``[B, F, 3, H, W]`` in [-1, 1]; face_mask: ``[B, F, 1, H, W]`` in {0, 1} (the face's place in the
    validation clip). Returns None (and logs nothing) when no mask has a face pixel.
    """
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    masks = face_mask.float()[:, :, 0].cpu().numpy()
    size = min(config.crop_size, frames.shape[2], frames.shape[3])
    crops = [c for sample, sample_masks in zip(frames, masks) for c in mask_crops(sample, sample_masks, size)]
    if not crops:
        return None
    spectrum = mean_spectrum(crops)
    profile = radial_profile(spectrum)
    writer.add_image(f"{tag}/spectrum", spectrum_image(spectrum), step, dataformats="HWC")
    writer.add_image(f"{tag}/profile", profile_plot({"generated": profile}, config), step, dataformats="HWC")
    bands = band_amplitudes(profile, config)
    for name, value in bands.items():
        writer.add_scalar(f"{tag}/{name}", value, step)
    return bands
