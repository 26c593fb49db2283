"""FID: the proper set-level FID, the official per-frame variant, and torchvision Inception loading."""

from __future__ import annotations

import numpy as np
import pytest

from idvid.evaluation.fid import (
    InceptionFeatures,
    frechet_distance,
    per_frame_fid_official,
    set_fid,
    statistics,
)
from idvid.evaluation.identity import arcface_crop, largest_faces


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 16))
    assert set_fid(features, features) == pytest.approx(0.0, abs=1e-8)
    shifted = features + 0.5
    assert set_fid(features, shifted) == pytest.approx(16 * 0.25, rel=1e-6)  # same covariance: |mu1 - mu2|^2
    assert set_fid(features, rng.normal(size=(40, 16)) * 2) > 5


def test_set_fid_equals_the_frechet_formula_on_means_and_covariances():
    rng = np.random.default_rng(1)
    for n1, n2, dim in ((30, 25, 8), (5, 7, 12)):  # full-rank and low-rank covariances
        a, b = rng.normal(size=(n1, dim)), rng.normal(1.0, 1.5, size=(n2, dim))
        assert set_fid(a, b) == pytest.approx(frechet_distance(*statistics(a), *statistics(b)), rel=1e-5, abs=1e-6)


def test_official_per_frame_fid_is_the_squared_feature_distance():
    rng = np.random.default_rng(2)
    reference, frames = rng.normal(size=6), rng.normal(size=(4, 6))
    zero = np.zeros((6, 6))
    formula = np.mean([frechet_distance(reference, zero, frame, zero) for frame in frames])
    assert per_frame_fid_official(reference, frames) == pytest.approx(formula)
    assert per_frame_fid_official(reference, frames) == pytest.approx(np.mean(((frames - reference) ** 2).sum(1)))


def test_inception_features_load_from_a_local_file(tmp_path, tiny_models, people, analyzer):
    # torchvision's inception_v3 architecture with random weights saved locally (real weights: same code).
    features = InceptionFeatures(tiny_models["inception"])
    frames = list(people[0][:3])
    crops = np.stack([arcface_crop(f, face, 224) for f, face in zip(frames, largest_faces(analyzer, frames))])
    out = features(crops)
    assert out.shape == (3, 2048) and np.isfinite(out).all()
    assert set_fid(out, out) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.pth")):
        InceptionFeatures(tmp_path / "missing.pth")
