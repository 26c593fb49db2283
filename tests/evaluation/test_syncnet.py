"""SyncNet: the public state-dict layout loads (widths read from the file), inputs, and the offset search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idvid.data.audio import SAMPLE_RATE
from idvid.evaluation.syncnet import (
    CROP_SIZE,
    MFCC_PER_FRAME,
    SYNCNET_FPS,
    WINDOW_FRAMES,
    face_crops,
    load_syncnet,
    mfcc,
    sync_score,
)

from .models import save_tiny_syncnet


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    return save_tiny_syncnet(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 96, 96, 3), dtype=np.uint8)  # 1.5 s at 8 fps
    boxes = np.tile(np.array([[20, 24, 70, 80]], np.float32), (12, 1))
    waveform = (rng.normal(size=int(1.5 * SAMPLE_RATE)) * 0.1).astype(np.float32)
    return frames, boxes, waveform


def test_the_public_layout_loads_with_the_widths_of_the_file(syncnet_file):
    model = load_syncnet(syncnet_file)
    state = torch.load(syncnet_file, weights_only=True)
    assert set(model.state_dict()) == set(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.netcnnaud[0].out_channels == 4 and model.netfclip[3].out_features == 12
    assert not model.training  # BatchNorm uses the stored statistics


def test_missing_or_foreign_weights_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SyncNet weights not found: .*nowhere\.model.*syncnet_v2\.model"):
        load_syncnet(tmp_path / "nowhere.model")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a SyncNet state dict in the public layout"):
        load_syncnet(tmp_path / "other.pt")


def test_mfcc_gives_13_coefficients_at_100_hz():
    waveform = np.random.default_rng(1).normal(size=SAMPLE_RATE).astype(np.float32)
    coefficients = mfcc(waveform)
    assert coefficients.shape == (99, 13) and np.isfinite(coefficients).all()
    louder = mfcc(waveform * 10)  # a gain shifts every log filter energy alike: only coefficient 0 (log energy) moves
    np.testing.assert_allclose(louder[:, 0] - coefficients[:, 0], np.log(100.0), atol=1e-4)
    np.testing.assert_allclose(louder[:, 1:], coefficients[:, 1:], atol=1e-3)


def test_face_crops_are_25_fps_bgr_squares_around_the_box(clip):
    frames, boxes, _ = clip
    marked = frames.copy()
    marked[:, 50:54, 43:47] = (255, 0, 0)  # red at the box centre (45, 52)
    crops = face_crops(marked, boxes, fps=8)
    assert crops.shape == (int(12 / 8 * SYNCNET_FPS), CROP_SIZE, CROP_SIZE, 3)
    centre = crops[:, CROP_SIZE // 2 - 4 : CROP_SIZE // 2 + 4, CROP_SIZE // 2 - 4 : CROP_SIZE // 2 + 4]
    assert (centre[..., 2] > 200).all() and (centre[..., 0] < 60).all()  # BGR: red is the last channel


def test_sync_d_and_sync_c_are_the_minimum_and_the_median_gap_of_the_offset_curve(syncnet_file, clip):
    model = load_syncnet(syncnet_file)
    frames, boxes, waveform = clip
    score = sync_score(model, frames, boxes, waveform, fps=8, max_offset=3)
    # The curve by hand: every lip window against every audio window at offsets -3..3 (zeros past the ends).
    crops = torch.from_numpy(face_crops(frames, boxes, 8)).float().permute(3, 0, 1, 2)
    cc = torch.from_numpy(mfcc(waveform).T.copy())
    windows = min(crops.shape[1], cc.shape[1] // MFCC_PER_FRAME) - WINDOW_FRAMES + 1
    with torch.no_grad():
        lips = model.embed_lips(torch.stack([crops[:, i : i + WINDOW_FRAMES] for i in range(windows)]))
        audio = model.embed_audio(torch.stack([cc[:, 4 * i : 4 * i + 20] for i in range(windows)])[:, None])
    curve = []
    for shift in range(-3, 4):
        distances = [
            float(torch.dist(lips[i], audio[i + shift])) if 0 <= i + shift < windows else float(lips[i].norm())
            for i in range(windows)
        ]
        curve.append(np.mean(distances))
    assert score.distance == pytest.approx(min(curve), rel=1e-5)
    assert score.confidence == pytest.approx(np.median(curve) - min(curve), rel=1e-4, abs=1e-6)
    assert score.offset == -(int(np.argmin(curve)) - 3)


def test_too_short_a_video_has_no_score(syncnet_file, clip):
    frames, boxes, waveform = clip
    assert sync_score(load_syncnet(syncnet_file), frames[:1], boxes[:1], waveform[:2000], fps=8) is None
