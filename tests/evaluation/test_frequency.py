"""Frequency analysis: spectrum peaks, band amplitudes under blur and sharpening, pictures, TensorBoard."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from idvid.evaluation.frequency import (
    FrequencyConfig,
    band_amplitudes,
    face_crops,
    log_amplitude_spectrum,
    log_validation_spectra,
    mean_spectrum,
    profile_plot,
    radial_profile,
    spectrum_image,
)
from idvid.evaluation.identity import largest_faces


@pytest.mark.parametrize("cycles", [5, 16, 40])
def test_sinusoid_spectrum_peaks_at_its_frequency_radius(cycles):
    size = 128
    y, x = np.indices((size, size))
    angle = np.deg2rad(30.0)
    # A diagonal grating with `cycles` periods along its direction: its peak sits at radius `cycles`.
    kx, ky = np.rint(cycles * np.cos(angle)), np.rint(cycles * np.sin(angle))
    image = 100 + 50 * np.sin(2 * np.pi * (kx * x + ky * y) / size)
    spectrum = log_amplitude_spectrum(image)
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    assert np.hypot(peak[0] - size // 2, peak[1] - size // 2) == pytest.approx(np.hypot(kx, ky))
    profile = radial_profile(spectrum)
    assert int(np.argmax(profile)) == int(np.rint(np.hypot(kx, ky)))
    assert len(profile) == size // 2 + 1


def test_band_edges_are_checked():
    with pytest.raises(ValueError, match="low_band=0.6"):
        FrequencyConfig(low_band=0.6, high_band=0.5)


def test_blur_lowers_and_sharpening_raises_the_high_band(people, analyzer):
    frames = list(people[0][:4])
    crops = face_crops(frames, largest_faces(analyzer, frames), 128)
    assert len(crops) == 4
    config = FrequencyConfig()

    def bands(images):
        return band_amplitudes(radial_profile(mean_spectrum(images)), config)

    blurred = [cv2.GaussianBlur(c, (0, 0), 1.5) for c in crops]
    sharpened = [cv2.addWeighted(c, 2.0, cv2.GaussianBlur(c, (0, 0), 1.5), -1.0, 0) for c in crops]
    original, soft, sharp = bands(crops), bands(blurred), bands(sharpened)
    assert soft["freq_high"] < original["freq_high"] < sharp["freq_high"]
    assert soft["freq_high_minus_low"] < original["freq_high_minus_low"] < sharp["freq_high_minus_low"]
    # Blur barely touches the low band compared with the high band.
    assert abs(soft["freq_low"] - original["freq_low"]) < abs(soft["freq_high"] - original["freq_high"])


def test_pictures_are_rgb_images(people):
    spectrum = log_amplitude_spectrum(people[0][0][..., 0])
    picture = spectrum_image(spectrum)
    assert picture.shape == (512, 512, 3) and picture.dtype == np.uint8 and picture.std() > 0
    plot = profile_plot({"a": radial_profile(spectrum), "b": radial_profile(spectrum) + 1}, FrequencyConfig())
    assert plot.shape == (360, 560, 3) and (plot < 255).any()


def test_validation_spectra_go_to_tensorboard(tmp_path, people):
    video = torch.from_numpy(people[0][:3]).permute(0, 3, 1, 2).float()[None] / 127.5 - 1  # [1, 3, 3, H, W]
    mask = torch.zeros(1, 3, 1, 256, 256)
    mask[..., 80:180, 90:170] = 1
    with SummaryWriter(str(tmp_path)) as writer:
        bands = log_validation_spectra(writer, "val/frequency", video, mask, 7, FrequencyConfig(crop_size=64))
        assert log_validation_spectra(writer, "x", video, torch.zeros_like(mask), 7, FrequencyConfig()) is None
    assert set(bands) == {"freq_low", "freq_high", "freq_high_minus_low"}
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"val/frequency/spectrum", "val/frequency/profile"} <= set(events.Tags()["images"])
    assert events.Scalars("val/frequency/freq_high")[0].step == 7
