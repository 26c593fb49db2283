"""MegActor-Sigma's recipe steps: modality shares, face-drop regions and loss masks, driving-frame augmentations."""

from __future__ import annotations

import pytest
import torch
from idvid_megactor import DriveAugmentation, ModalityControl
from idvid_megactor.face_regions import box_masks, region_boxes

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom

SIZE = 32  # frames of 32 x 32 pixels
EYES = torch.tensor([8.0, 6.0, 24.0, 12.0])  # xyxy
MOUTH = torch.tensor([12.0, 20.0, 20.0, 26.0])


def batch_of(size=4, frames=5, audio=True):
    generator = torch.Generator().manual_seed(0)
    batch = {
        "video": torch.rand(size, frames, 3, SIZE, SIZE, generator=generator) * 2 - 1,
        "frame_eye_boxes": EYES.expand(size, frames, 4).clone(),
        "frame_mouth_boxes": MOUTH.expand(size, frames, 4).clone(),
    }
    if audio:
        batch["audio_mel"] = torch.rand(size, 80, 50, generator=generator)
        batch["has_audio"] = torch.ones(size, dtype=torch.bool)
    return batch


def random_source(seed=0):
    return BatchRandom(torch.Generator().manual_seed(seed))


def test_modality_shares_over_many_steps_match_the_config():
    step = ModalityControl(shares={"visual": 0.1, "audio": 0.2, "mixed": 0.7}, regions=["eyes", "mouth", "both"])
    random = random_source()
    counts, regions, total = torch.zeros(3), torch.zeros(3), 0
    for _ in range(500):  # 500 steps of 8 samples
        modality, region = step.draw(random, 8)
        counts += torch.bincount(modality, minlength=3)
        regions += torch.bincount(region, minlength=3)
        total += 8
    shares = counts / total
    # within 4 standard deviations of a binomial share at n = 4000
    for measured, expected in zip(shares.tolist(), (0.1, 0.2, 0.7)):
        assert abs(measured - expected) < 4 * (expected * (1 - expected) / total) ** 0.5
    assert (regions / total - 1 / 3).abs().max() < 0.03
    only_visual = ModalityControl(shares={"visual": 1.0, "audio": 0.0, "mixed": 0.0})
    assert set(only_visual.draw(random_source(), 64)[0].tolist()) == {0}


def test_each_modality_keeps_its_signals_and_regions():
    batch = batch_of(size=4)
    step = ModalityControl(box_margin=0.0)
    # force one sample of each case: visual eyes, visual mouth, audio, mixed
    step.draw = lambda random, size: (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 2]))
    out = step.on_batch(dict(batch), random_source())
    eyes = box_masks(batch["frame_eye_boxes"], SIZE, SIZE)
    mouth = box_masks(batch["frame_mouth_boxes"], SIZE, SIZE)
    video, drive = batch["video"], out["drive_video"]
    torch.testing.assert_close(drive[0], video[0] * eyes[0], rtol=0, atol=0)  # visual, eyes only
    torch.testing.assert_close(drive[1], video[1] * mouth[1], rtol=0, atol=0)  # visual, mouth only
    assert drive[2].abs().sum() == 0  # audio only: no visual signal
    torch.testing.assert_close(drive[3], video[3] * eyes[3], rtol=0, atol=0)  # mixed: eyes from the video
    assert out["has_audio"].tolist() == [False, False, True, True]  # visual only drops the audio
    assert out["audio_mel"][:2].abs().sum() == 0 and torch.equal(out["audio_mel"][2:], batch["audio_mel"][2:])
    regions = out["drive_region_mask"]
    torch.testing.assert_close(regions[0], eyes[0])
    torch.testing.assert_close(regions[1], mouth[1])
    torch.testing.assert_close(regions[2], mouth[2])  # the audio drives the mouth
    torch.testing.assert_close(regions[3], torch.maximum(eyes[3], mouth[3]))


def test_the_mouth_attention_mask_is_set_when_the_driving_frames_show_no_mouth():
    batch = batch_of(size=5)
    step = ModalityControl(box_margin=0.0)
    # visual eyes, visual mouth, visual both, audio, mixed (the video drives the eyes, the audio the mouth)
    forced = (torch.tensor([0, 0, 0, 1, 2]), torch.tensor([0, 1, 2, 0, 1]))
    step.draw = lambda random, size: forced
    random = random_source()
    out = step.on_batch(dict(batch), random)
    eyes = box_masks(batch["frame_eye_boxes"], SIZE, SIZE)
    mouth = box_masks(batch["frame_mouth_boxes"], SIZE, SIZE)
    queries, keys = out["attention_exclusion_queries"], out["attention_exclusion_keys"]
    assert queries.shape == keys.shape == (5, 5, 1, SIZE, SIZE)
    for sample in (0, 4):  # no mouth in the driving frames: the mouth's queries may not read the eyes' keys
        assert torch.equal(queries[sample], mouth[sample]) and torch.equal(keys[sample], eyes[sample])
    assert queries[1:4].abs().sum() == 0 and keys[1:4].abs().sum() == 0  # mouth driven by the video, or no video
    # The switch: no masks, and not one draw more or less (exact resume).
    off = ModalityControl(box_margin=0.0, mouth_attention_mask=False)
    off.draw = lambda random, size: forced
    without = off.on_batch(dict(batch), random_source())
    assert "attention_exclusion_queries" not in without and "attention_exclusion_keys" not in without
    assert torch.equal(without["drive_video"], out["drive_video"])
    again = random_source()
    ModalityControl().on_batch(dict(batch), again)
    unmasked = random_source()
    ModalityControl(mouth_attention_mask=False).on_batch(dict(batch), unmasked)
    assert torch.equal(again.generator.get_state(), unmasked.generator.get_state())


def test_face_drop_masks_cover_the_landmark_regions():
    batch = batch_of(size=2, audio=False)
    del batch["frame_eye_boxes"], batch["frame_mouth_boxes"]  # older data: derived from the 68 landmarks
    landmarks = torch.full((2, 5, 68, 2), 16.0)
    landmarks[..., 36:48, :] = torch.tensor([[9.0, 7.0], [23.0, 11.0]]).repeat(6, 1)
    landmarks[..., 48:68, :] = torch.tensor([[13.0, 21.0], [19.0, 25.0]]).repeat(10, 1)
    landmarks[1, 2] = float("nan")  # a frame without a face
    batch["frame_landmarks"] = landmarks
    eye_boxes, mouth_boxes = region_boxes(batch)
    assert eye_boxes[0, 0].tolist() == [9.0, 7.0, 23.0, 11.0] and mouth_boxes[0, 0].tolist() == [13.0, 21.0, 19.0, 25.0]
    mask = box_masks(eye_boxes, SIZE, SIZE, margin=0.25)[0, 0, 0]
    rows, columns = torch.nonzero(mask, as_tuple=True)
    # every landmark's pixel is inside, and the box grew by a quarter of its size on each side
    assert rows.min() <= 7 - 1 and rows.max() >= 11 and columns.min() <= 9 - 3 and columns.max() >= 23 + 2
    assert box_masks(eye_boxes, SIZE, SIZE)[1, 2].sum() == 0  # no face, no region
    # the loss mask follows the driven regions, at the latent grid
    step = ModalityControl(
        shares={"visual": 1.0, "audio": 0.0, "mixed": 0.0},
        regions=["both"],
        region_loss_probability=1.0,
        box_margin=0.0,
    )
    out = step.on_batch(batch, random_source())
    loss_mask = step.on_loss_mask(torch.ones(2, 2, 1, 4, 4), out, random_source())
    cells = (out["drive_region_mask"][0, 0, 0] > 0).view(4, 8, 4, 8).any(3).any(1)  # 8 x 8 pixels per cell
    assert torch.equal(loss_mask[0, 0, 0] > 0, cells) and 0 < cells.sum() < 16
    everywhere = ModalityControl(region_loss_probability=0.0).on_loss_mask(
        torch.ones(2, 2, 1, 4, 4), out, random_source()
    )
    assert bool((everywhere == 1).all())


def test_modality_control_refuses_bad_shares_and_regions():
    with pytest.raises(ConfigError, match="summing to 1"):
        ModalityControl(shares={"visual": 0.5, "audio": 0.2, "mixed": 0.2})
    with pytest.raises(ConfigError, match="summing to 1"):
        ModalityControl(shares={"video": 1.0})
    with pytest.raises(ConfigError, match="face-drop regions"):
        ModalityControl(regions=["nose"])


def test_drive_augmentation_changes_only_the_driving_frames_and_draws_deterministically():
    batch = batch_of(size=3, audio=False)
    step = DriveAugmentation(resolution_probability=1.0, resize_probability=1.0, colour_probability=1.0)
    first = step.on_batch(dict(batch), random_source(3))["drive_video"]
    again = step.on_batch(dict(batch), random_source(3))["drive_video"]
    assert torch.equal(first, again) and first.shape == batch["video"].shape
    assert not torch.equal(first, batch["video"]) and first.abs().max() <= 1
    off = DriveAugmentation(resolution_probability=0.0, resize_probability=0.0, colour_probability=0.0)
    random = random_source(3)
    assert torch.equal(off.on_batch(dict(batch), random)["drive_video"], batch["video"])
    # draws are made whatever the probabilities: the generator ends where the augmenting run's ends
    augmenting = random_source(3)
    step.on_batch(dict(batch), augmenting)
    assert torch.equal(random.generator.get_state(), augmenting.generator.get_state())
    # each augmentation on its own: identity at its neutral value
    frames = batch["video"][0]
    torch.testing.assert_close(DriveAugmentation.stretch(frames, 1.0, 1.0), frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(DriveAugmentation.colour(frames, 0.0, 1.0, 1.0), frames, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="resize_scale"):
        DriveAugmentation(resize_scale=[1.2, 0.8])
