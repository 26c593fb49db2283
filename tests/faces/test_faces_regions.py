"""Eye and mouth boxes from the 68 iBUG landmarks."""

from __future__ import annotations

import numpy as np

from idvid.faces.regions import region_boxes


def test_boxes_bound_the_eye_and_mouth_landmarks_and_are_nan_without_landmarks():
    landmarks = np.random.default_rng(0).uniform(0, 100, (3, 68, 2)).astype(np.float32)
    landmarks[1] = np.nan  # a frame without a face
    eyes, mouth = region_boxes(landmarks)
    assert eyes.shape == mouth.shape == (3, 4)
    for t in (0, 2):
        np.testing.assert_array_equal(eyes[t], [*landmarks[t, 36:48].min(0), *landmarks[t, 36:48].max(0)])
        np.testing.assert_array_equal(mouth[t], [*landmarks[t, 48:68].min(0), *landmarks[t, 48:68].max(0)])
    assert np.isnan(eyes[1]).all() and np.isnan(mouth[1]).all()
    no_layout = region_boxes(np.zeros((3, 0, 2), np.float32))  # insightface gives no 68 landmarks
    assert all(np.isnan(box).all() and box.shape == (3, 4) for box in no_layout)
