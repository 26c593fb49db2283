"""Every batch key: the documented list (dataset docstring, CONTRIBUTING.md) matches the real batch and the
keys `sample` gives; per-frame annotations are in the batch's own pixel coordinates; no step aligns faces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import idvid.data.dataset as dataset_module
from idvid.data.datamodule import collate
from idvid.data.dataset import IdentityVideoDataset
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4
from idvid.faces.reference import reference_images
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build
from idvid.verbs.sample import reference_batch

CONTRIBUTING = Path(__file__).resolve().parents[2] / "CONTRIBUTING.md"
# Sizes that tell every symbol apart: B=2 items, F=5 frames of 48 x 80, references 32 x 32, D=128,
# audio windows of M=80 mel bins x L=120 mel frames.
SIZES = {"B": 2, "F": 5, "H": 48, "W": 80, "Rh": 32, "Rw": 32, "D": 128, "M": 80, "L": 120}
DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


def docstring_rows() -> dict[str, tuple[str, str, str]]:
    """key -> (shape, dtype, sampling) from the dataset module's table."""
    pattern = re.compile(r"^ {4}(\w+) +(\[[^\]]*\]|list\[str\]) +(\w+) +(yes|no) ", re.MULTILINE)
    return {key: (shape, dtype, sampling) for key, shape, dtype, sampling in pattern.findall(dataset_module.__doc__)}


def contributing_rows() -> dict[str, tuple[str, str, str]]:
    """key -> (shape, dtype, sampling) from CONTRIBUTING.md's batch-keys table."""
    pattern = re.compile(r"^\| `(\w+)` \| `(\[[^\]]*\]|list\[str\])` \| (\w+) \| (yes|no) \|", re.MULTILINE)
    return {key: (shape, dtype, sampling) for key, shape, dtype, sampling in pattern.findall(CONTRIBUTING.read_text())}


def expected_shape(shape: str, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else sizes[part] for part in shape.strip("[]").split(", "))


def check_batch_against_rows(batch: dict, rows: dict[str, tuple[str, str, str]], sizes: dict[str, int]) -> None:
    for key, (shape, dtype, _) in rows.items():
        value = batch[key]
        if shape == "list[str]":
            assert isinstance(value, list) and len(value) == sizes["B"] and all(isinstance(v, str) for v in value), key
        else:
            assert tuple(value.shape) == expected_shape(shape, sizes), (key, tuple(value.shape), shape)
            assert value.dtype == DTYPES[dtype], (key, value.dtype, dtype)


@pytest.fixture(scope="module")
def dataset(demo_manifest) -> IdentityVideoDataset:
    return IdentityVideoDataset(
        demo_manifest, num_frames=5, frame_stride=3, height=48, width=80, reference_size=32, audio_mel_frames=120
    )


@pytest.fixture(scope="module")
def batch(dataset) -> dict:
    return collate([dataset[(0, 1)], dataset[(5, 4)]])


def test_the_documented_keys_are_the_batch_keys_with_their_shapes_and_dtypes(batch):
    rows = docstring_rows()
    assert len(rows) > 20  # the table was found
    assert set(rows) == set(batch)
    check_batch_against_rows(batch, rows, SIZES)


def test_contributing_lists_the_same_keys_as_the_dataset(batch):
    assert contributing_rows() == docstring_rows()


AUDIO_KEYS = {"audio_mel", "audio_frame_times", "has_audio"}


def test_a_dataset_not_asked_for_audio_builds_no_audio_keys(demo_manifest, batch):
    silent = IdentityVideoDataset(demo_manifest, num_frames=5, frame_stride=3, height=48, width=80, reference_size=32)
    item = silent[(0, 1)]
    assert set(item) == set(docstring_rows()) - AUDIO_KEYS
    # the same draws: the audio keys are only added, the other entries are the same
    for key, value in item.items():
        if isinstance(value, str):
            assert value == batch[key][0], key
        else:
            torch.testing.assert_close(value, batch[key][0], rtol=0, atol=0, equal_nan=True, msg=key)
    # nor does it read the cached audio: a mel-bin count that does not match the data is only an error when asked
    IdentityVideoDataset(demo_manifest, num_frames=5, audio_mel_bins=128)[0]
    with pytest.raises(ValueError, match="80 mel bins but data.audio_mel_bins=128"):
        IdentityVideoDataset(demo_manifest, num_frames=5, audio_mel_bins=128, audio_mel_frames=120)[0]


def test_sampling_gives_exactly_the_keys_documented_for_sampling(demo_manifest, tmp_path):
    entry = read_manifest(demo_manifest)[0]
    ann = load_annotations(entry["annotations"], with_images=False)
    photo = tmp_path / "frame.png"
    frame = read_mp4(entry["video"])[int(ann["reference_frame"])]
    cv2.imwrite(str(photo), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    sampled = reference_batch(photo, "a person.", 48, 80)
    rows = {key: row for key, row in docstring_rows().items() if row[2] == "yes"}
    assert set(sampled) == set(rows)
    # At sampling time the reference has the video's size (Rh x Rw = H x W) and the batch is one photo.
    check_batch_against_rows(sampled, rows, {**SIZES, "B": 1, "Rh": 48, "Rw": 80})
    assert torch.isfinite(sampled["ref_landmarks"]).all()  # dlib gives 68 landmarks


def test_frame_annotations_are_in_the_batch_videos_pixels(dataset, batch):
    has_face = batch["frame_has_face"]
    assert has_face.any()
    kps, boxes, landmarks = batch["frame_kps"][has_face], batch["frame_boxes"][has_face], batch["frame_landmarks"]
    assert torch.isfinite(kps).all() and torch.isfinite(boxes).all()
    assert torch.isnan(batch["frame_kps"][~has_face]).all() and torch.isnan(batch["frame_boxes"][~has_face]).all()
    # Keypoints inside their box, inner landmarks (nose, eyes, mouth; the jaw line is the mask's own edge)
    # on the face mask: the same coordinates as the cropped and resized frames.
    assert ((kps >= boxes[:, None, :2] - 2) & (kps <= boxes[:, None, 2:] + 2)).all()
    masks = batch["face_mask"][:, :, 0]
    for b, f in zip(*torch.nonzero(has_face, as_tuple=True)):
        points = landmarks[b, f, 27:].round().long()
        x, y = points[:, 0].clamp(0, SIZES["W"] - 1), points[:, 1].clamp(0, SIZES["H"] - 1)
        assert masks[b, f][y, x].all()


def test_reference_points_are_where_the_keypoint_image_is_drawn(batch):
    for prefix in ("ref", "cross_ref"):
        kps_image, kps = batch[f"{prefix}_kps_image"], batch[f"{prefix}_kps"].round().long()
        for b in range(SIZES["B"]):
            drawn = kps_image[b, :, kps[b, :, 1], kps[b, :, 0]]  # [3, 5]: the disc under each point
            assert (drawn > 0).any(dim=0).all()
            box = batch[f"{prefix}_box"][b]
            assert (kps[b] >= box[:2] - 1).all() and (kps[b] <= box[2:] + 1).all()
        assert torch.isfinite(batch[f"{prefix}_landmarks"]).all()


def test_reference_pixels_are_those_aligned_from_the_decoded_frame(dataset, demo_manifest):
    item = dataset[(3, 2)]
    entry = read_manifest(demo_manifest)[2]
    frames, ann = read_mp4(entry["video"]), load_annotations(entry["annotations"])
    for prefix in ("ref", "cross_ref"):
        t = int(item[f"{prefix}_frame"])
        face, kps_image = reference_images(frames[t], ann["kps"][t], ann["masks"][t], 32, 32)
        for key, image in ((f"{prefix}_image", face), (f"{prefix}_kps_image", kps_image)):
            assert torch.equal(item[key], torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1), key


def test_no_item_aligns_a_face(demo_manifest, monkeypatch):
    # Alignment (two warps at 512 px per reference) was most of the loader's time; preprocess does it now.
    dataset = IdentityVideoDataset(demo_manifest, num_frames=9)

    def no_warp(*args, **kwargs):
        raise AssertionError("an item warped an image: reference alignment is back in the loader's hot path")

    monkeypatch.setattr(cv2, "warpAffine", no_warp)
    for draw in range(10):
        dataset[(draw, draw % len(dataset))]


def test_a_backend_without_landmarks_gives_nan_landmarks_that_still_collate(demo_manifest, tmp_path):
    entries = read_manifest(demo_manifest)[:2]
    lines = []
    for entry in entries:
        ann = load_annotations(entry["annotations"])
        if entry is entries[1]:
            ann["landmarks"] = np.zeros((len(ann["valid"]), 0, 2), np.float32)  # as insightface's clips hold them
        np.savez(tmp_path / f"{entry['id']}.npz", **ann)
        lines.append({**entry, "annotations": f"{entry['id']}.npz"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    mixed = IdentityVideoDataset(tmp_path / "manifest.jsonl", num_frames=5, height=48, width=80)
    batch = collate([mixed[(0, 0)], mixed[(0, 1)]])
    assert batch["frame_landmarks"].shape == (2, 5, 68, 2) and batch["ref_landmarks"].shape == (2, 68, 2)
    assert torch.isnan(batch["frame_landmarks"][1]).all() and torch.isnan(batch["ref_landmarks"][1]).all()
    assert torch.isnan(batch["cross_ref_landmarks"][1]).all()
    assert torch.isfinite(batch["ref_landmarks"][0]).all()
    assert torch.isfinite(batch["frame_kps"][1][batch["frame_has_face"][1]]).all()  # the rest is still there


def test_annotations_from_an_older_preprocess_are_refused_naming_the_fix(demo_manifest, tmp_path):
    entry = read_manifest(demo_manifest)[0]
    old = {k: v for k, v in load_annotations(entry["annotations"]).items() if not k.startswith("reference_")}
    np.savez(tmp_path / "old.npz", **old)
    line = {**entry, "annotations": "old.npz"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=r"lack arrays \['reference_faces', 'reference_matrices'\].*idvid preprocess"):
        IdentityVideoDataset(tmp_path / "manifest.jsonl")


@pytest.mark.needs_plugin("idvid_consisid")
def test_the_cross_face_step_switches_every_reference_key(batch):
    step = build(PluginKind.RECIPE_STEP, "consisid.cross_face_reference", probability=1.0)
    chosen = step.on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(0)))
    assert chosen["used_cross_ref"].all()
    for key in [k for k in batch if k.startswith("cross_ref_")]:
        assert torch.equal(chosen[key.removeprefix("cross_")], batch[key]), key
