"""pixel_identity: face-region pixel correlation to the reference, per band, and its margin over other references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from idvid.evaluation.frequency import FrequencyConfig
from idvid.evaluation.metrics import VideoContext
from idvid.evaluation.pixel_identity import PixelIdentity
from idvid.faces import Face

BOX = (16.0, 12.0, 48.0, 52.0)  # the face box in the 64x64 references below


def reference(index: int) -> np.ndarray:
    """A distinct 64x64 RGB face-sized picture per index (LFW crops, upsampled)."""
    crop = np.round(skimage.data.lfw_subset()[index] * 255).astype(np.uint8)
    return np.repeat(cv2.resize(crop, (64, 64), interpolation=cv2.INTER_CUBIC)[..., None], 3, axis=-1)


def context(name: str, frames: list[np.ndarray], ref: np.ndarray) -> VideoContext:
    face = Face(box=BOX, score=1.0, kps=np.zeros((5, 2), np.float32))
    return VideoContext(name, np.stack(frames), frames, [None] * len(frames), ref, face, "a person")


def test_copy_of_the_reference_scores_one_and_beats_other_identities():
    metric = PixelIdentity(FrequencyConfig(low_band=0.25, high_band=0.5), size=32)
    refs = [reference(i) for i in (0, 1, 2)]
    # video 0 shows its own reference at half size (the region maps by the frames' size); 1 and 2 show noise
    half = cv2.resize(refs[0], (32, 32), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    own = metric.video(context("a", [half, half], refs[0]))
    assert own["pixid"] > 0.95 and own["pixid_low"] > 0.95 and own["pixid_high"] > 0.3
    other = metric.video(context("b", [noise], refs[1]))
    assert abs(other["pixid"]) < 0.2
    metric.video(context("c", [noise], refs[2]))
    margins = metric.finish(None)
    assert set(margins) == {"pixid_margin", "pixid_margin_low", "pixid_margin_high"}
    assert 0.1 < margins["pixid_margin"] < 1  # the copy beats the other references; noise is near zero


def test_repeated_reference_is_not_counted_as_another_identity():
    metric = PixelIdentity(FrequencyConfig(), size=16)
    ref = reference(3)
    metric.video(context("x_s0", [ref], ref))
    metric.video(context("x_s1", [ref], ref))
    assert metric.finish(None) == {}  # one identity: no other reference to compare against


@pytest.mark.parametrize("bad", [{"low_band": 0.6, "high_band": 0.5}])
def test_bad_bands_are_refused(bad):
    with pytest.raises(ValueError, match="low_band"):
        PixelIdentity.from_config({"frequency": bad}, None, "cpu")
