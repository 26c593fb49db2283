"""IdentityVideoDataset on the demo clips."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from idvid.data.dataset import IdentityVideoDataset, fit_to_size
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4

IMAGE_KEYS = ("ref_image", "ref_kps_image", "cross_ref_image", "cross_ref_kps_image")


@pytest.fixture(scope="module")
def dataset(demo_manifest) -> IdentityVideoDataset:
    return IdentityVideoDataset(demo_manifest, num_frames=9, frame_stride=1, height=64, width=64, seed=0)


def test_item_shapes_ranges_and_dtypes(dataset):
    item = dataset[(0, 1)]
    assert item["video"].shape == (9, 3, 64, 64) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1 and item["video"].std() > 0.1
    assert item["face_mask"].shape == (9, 1, 64, 64)
    assert set(item["face_mask"].unique().tolist()) <= {0.0, 1.0} and item["face_mask"].sum() > 0
    for key in IMAGE_KEYS:
        assert item[key].shape == (3, 64, 64) and item[key].dtype == torch.float32
        assert item[key].min() >= -1 and item[key].max() <= 1
    for key in ("ref_embedding", "cross_ref_embedding"):
        assert item[key].shape == (128,) and abs(item[key].norm().item() - 1) < 1e-4
    assert item["id"] == "t1-0" and isinstance(item["caption"], str)
    assert item["has_cross_ref"].dtype == torch.bool
    # Reference: face on white (corners white), keypoint image: colours on black.
    assert (item["ref_image"][:, 0, 0] == 1).all() and (item["ref_image"] < 0.5).any()
    assert (item["ref_kps_image"][:, 0, 0] == -1).all() and (item["ref_kps_image"] > 0).any()


def test_item_content_matches_source(dataset, demo_manifest):
    item = dataset[(3, 2)]
    entry = read_manifest(demo_manifest)[2]
    frames, ann = read_mp4(entry["video"]), load_annotations(entry["annotations"])
    first = int(item["frame_indices"][0])
    expected = torch.from_numpy(fit_to_size(frames[first], 64, 64, cv2.INTER_AREA)).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(item["video"][0], expected)
    assert torch.equal(item["ref_embedding"], torch.from_numpy(ann["embeddings"][int(item["ref_frame"])]))
    assert ann["valid"][int(item["ref_frame"])] and ann["valid"][int(item["cross_ref_frame"])]


def test_same_draw_gives_identical_item(dataset, demo_manifest):
    a = dataset[(11, 4)]
    b = IdentityVideoDataset(demo_manifest, seed=0)[(11, 4)]  # fresh instance, fresh cache
    for key, value in a.items():
        assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key]
    assert torch.equal(dataset[4]["video"], dataset[(4, 4)]["video"])  # int key means draw = index


def test_different_draws_differ(dataset):
    picks = set()
    for draw in range(12):
        item = dataset[(draw, 0)]
        picks.add((int(item["frame_indices"][0]), int(item["ref_frame"]), int(item["cross_ref_frame"])))
    assert len(picks) > 6


def test_refs_come_from_inside_and_outside_the_clip(dataset):
    for draw in range(20):
        item = dataset[(draw, draw % len(dataset))]
        window = item["frame_indices"].tolist()
        assert int(item["ref_frame"]) in window
        assert bool(item["has_cross_ref"])  # 16-frame clips always have frames outside a 9-frame window
        assert not window[0] <= int(item["cross_ref_frame"]) <= window[-1]


def test_no_frame_outside_falls_back_inside(demo_manifest):
    full = IdentityVideoDataset(demo_manifest, num_frames=16)
    item = full[(5, 0)]
    assert not bool(item["has_cross_ref"])
    assert int(item["cross_ref_frame"]) in item["frame_indices"].tolist()


def test_stride_and_reference_size(demo_manifest):
    ds = IdentityVideoDataset(demo_manifest, num_frames=5, frame_stride=3, height=48, width=80, reference_size=32)
    item = ds[(2, 3)]
    assert item["video"].shape == (5, 3, 48, 80) and item["face_mask"].shape == (5, 1, 48, 80)
    assert torch.all(item["frame_indices"].diff() == 3)
    assert item["ref_image"].shape == (3, 32, 32) and item["cross_ref_kps_image"].shape == (3, 32, 32)


def test_too_short_clip_is_rejected(demo_manifest):
    with pytest.raises(ValueError, match=r"clip 'astronaut-0' has 16 frames .* needs 17"):
        IdentityVideoDataset(demo_manifest, num_frames=9, frame_stride=2)


def test_windows_without_a_face_are_never_picked(demo_manifest, tmp_path):
    # Copy one clip with faces only in frames 12-15: every window must still contain one.
    entry = read_manifest(demo_manifest)[0]
    ann = load_annotations(entry["annotations"])
    ann["valid"][:12] = False
    ann["kps"][:12] = np.nan
    np.savez(tmp_path / "late.npz", **ann)
    line = {"id": "late", "video": entry["video"], "caption": "x.", "annotations": "late.npz", "identity": "p"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    ds = IdentityVideoDataset(tmp_path / "manifest.jsonl", num_frames=4)
    for draw in range(15):
        item = ds[(draw, 0)]
        assert int(item["frame_indices"][-1]) >= 12 and int(item["ref_frame"]) >= 12
        assert not bool(item["has_cross_ref"]) or int(item["cross_ref_frame"]) >= 12
