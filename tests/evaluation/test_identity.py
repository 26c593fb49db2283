"""Identity similarity on real faces: the same person scores ~1, a different person clearly lower."""

from __future__ import annotations

import math

import numpy as np
import pytest

from idvid.evaluation.identity import (
    AnalyzerEmbedder,
    evenly_sampled_indices,
    identity_similarity,
    largest_faces,
    reference_face,
)


def score(analyzer, reference_frame, clip):
    found = reference_face(analyzer, reference_frame)
    sampled = [clip[i] for i in evenly_sampled_indices(len(clip))]
    return identity_similarity(AnalyzerEmbedder(analyzer), *found, sampled, largest_faces(analyzer, sampled))


def test_evenly_sampled_indices_follow_the_official_protocol():
    assert evenly_sampled_indices(49).tolist() == np.linspace(0, 48, 16).astype(int).tolist()
    assert evenly_sampled_indices(49)[[0, -1]].tolist() == [0, 48]
    assert evenly_sampled_indices(5).tolist() == [0, 1, 2, 3, 4]  # fewer frames than 16: each once
    with pytest.raises(ValueError, match="at least one frame"):
        evenly_sampled_indices(0)


def test_a_video_of_one_frame_against_that_frame_scores_one(analyzer, people):
    still = np.repeat(people[0][:1], 4, axis=0)
    result = score(analyzer, people[0][0], still)
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert (result.frames_used, result.frames_skipped) == (4, 0)


def test_same_identity_scores_near_one_and_a_different_person_clearly_lower(analyzer, people):
    same = score(analyzer, people[0][0], people[0])
    other = score(analyzer, people[0][0], people[1])
    assert same.score > 0.97  # the camera moves, the person does not change
    assert other.score < same.score - 0.08, (same, other)
    assert min(same.frames_used, other.frames_used) >= 14  # dlib HOG may miss a rotated frame


def test_frames_without_a_face_are_skipped_and_counted(analyzer, people):
    clip = people[0].copy()
    clip[8:] = 127  # blank frames: no face
    result = score(analyzer, people[0][0], clip)
    assert result.frames_skipped == 8 and result.frames_used == 8
    assert result.score > 0.97
    blank = score(analyzer, people[0][0], np.full_like(clip, 127))
    assert math.isnan(blank.score) and blank.frames_skipped == 16


def test_cosine_is_clamped_at_zero(people, analyzer):
    class Opposite:  # the frame embedding points away from the reference's
        def __init__(self):
            self.calls = 0

        def embed(self, image, face):
            self.calls += 1
            return np.array([1.0, 0.0] if self.calls == 1 else [-1.0, 0.0], dtype=np.float32)

    found = reference_face(analyzer, people[0][0])
    frames = list(people[0][:2])
    result = identity_similarity(Opposite(), *found, frames, largest_faces(analyzer, frames))
    assert result.score == 0.0
