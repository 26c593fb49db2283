"""Importing ConsisID's released annotation layout, on a tiny tree written in that layout."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from idvid_consisid.annotation_import import import_consisid

from idvid.cli import main
from idvid.data.dataset import IdentityVideoDataset
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import read_mp4, write_mp4
from idvid.demo import source_photos
from idvid.faces import DlibFaceAnalyzer
from tests.preprocess.conftest import PAN, CountingAnalyzer, render

FACE = {"name": "dlib", "options": {}}


def box_item(box, track, confidence=0.95):
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "confidence": confidence, "new_track_id": track}


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory):
    """The preprocess tests' slow pan over the astronaut photo, as an mp4."""
    photo = source_photos()["astronaut"]
    path = tmp_path_factory.mktemp("clips") / "astronaut.mp4"
    write_mp4(path, render(photo, DlibFaceAnalyzer().detect(photo)[0].box, PAN))
    return path


@pytest.fixture
def consisid_tree(astronaut_clip, tmp_path):
    """ConsisID's layout around one real clip: boxes from a detector, SAM2-style masks for frames 0-5."""
    root = tmp_path / "consisid"
    videos, anno = root / "videos", root / "anno"
    videos.mkdir(parents=True)
    shutil.copy2(astronaut_clip, videos / "clip_001.mp4")
    frames = read_mp4(videos / "clip_001.mp4")
    detector = DlibFaceAnalyzer()
    boxes, face_boxes = {}, []
    for t, frame in enumerate(frames):
        face = np.array(detector.detect(frame)[0].box)
        face_boxes.append(face)
        head = face + np.array([-10, -25, 10, 10])
        person = np.array([0, face[1] - 30, frame.shape[1], frame.shape[0]])
        boxes[str(t)] = {"face": [box_item(face, 0)], "head": [box_item(head, 0)], "person": [box_item(person, 0)]}
    (anno / "refine_bbox_jsons").mkdir(parents=True)
    (anno / "refine_bbox_jsons" / "clip_001.json").write_text(json.dumps(boxes))
    tracks = anno / "track_masks_data" / "clip_001"
    (tracks / "tracking_mask_results" / "0").mkdir(parents=True)
    all_frames = list(range(len(frames)))
    # Track 1 has face frames but no head frames: ConsisID's loader does not use it, nor does the importer.
    valid = {"0": {"face": all_frames, "head": all_frames}, "1": {"face": [0, 1], "head": []}}
    (tracks / "valid_frame.json").write_text(json.dumps(valid))
    (tracks / "control_sam2_frame.json").write_text(json.dumps({"0": {"face": 3, "head": 3}}))
    (tracks / "corresponding_data.json").write_text(json.dumps({"0": {"face": 0, "head": 0}}))
    masks = []
    for t in range(6):
        mask = np.zeros(frames.shape[1:3], np.uint8)
        x0, y0, x1, y1 = face_boxes[t].astype(int)
        mask[y0:y1, x0:x1] = 255
        cv2.imwrite(str(tracks / "tracking_mask_results" / "0" / f"annotated_frame_{t:05d}.png"), mask)
        masks.append(mask > 0)
    captions = [
        {"path": "/data/where/it/was/clip_001.mp4", "cap": "an astronaut smiles.", "fps": 8, "duration": 1.0},
        {"path": "gone.mp4", "cap": "a video that was never downloaded.", "fps": 8, "duration": 1.0},
    ]
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "total_train_data.txt").write_text("videos,captions.json,anno\n")
    return root, np.stack(face_boxes), np.stack(masks)


def test_import_reads_the_layout_into_the_manifest_format(consisid_tree, tmp_path):
    root, face_boxes, masks = consisid_tree
    out = tmp_path / "out"
    analyzer = CountingAnalyzer()
    summary = import_consisid(root / "total_train_data.txt", out, analyzer, FACE, min_frames=4)
    assert summary["outcomes"] == {"kept": 1, "skipped: missing_video": 1}
    (entry,) = read_manifest(out / "manifest.jsonl")
    assert entry["id"] == "clip_001-0" and entry["caption"] == "an astronaut smiles."
    assert entry["video"] == str((root / "videos" / "clip_001.mp4").resolve())  # referenced, not copied
    ann = load_annotations(entry["annotations"])
    assert ann["valid"].all() and int(ann["embedding_dim"]) == 128
    np.testing.assert_allclose(ann["boxes"], face_boxes)  # ConsisID's boxes are kept as they are
    np.testing.assert_array_equal(ann["masks"][:6], masks.astype(np.uint8))  # its SAM2 masks too
    assert ann["masks"][6:].sum() > 0  # frames without a mask PNG fall back to the landmark hull
    assert str(ann["mask_source"]) == "consisid_sam2+landmark_hull"
    assert int(ann["reference_frame"]) == 3  # ConsisID's control frame
    x0, y0, x1, y1 = (face_boxes[:, i, None] for i in range(4))
    assert ((ann["kps"][..., 0] > x0) & (ann["kps"][..., 0] < x1) & (ann["kps"][..., 1] > y0)).all()
    np.testing.assert_allclose(np.linalg.norm(ann["embeddings"], axis=1), 1.0, atol=1e-5)
    item = IdentityVideoDataset(out / "manifest.jsonl", num_frames=4, height=32, width=32)[(0, 0)]
    assert item["video"].shape == (4, 3, 32, 32)

    # A second import reuses every finished clip; a too-long training clip is a recorded skip.
    again = CountingAnalyzer()
    assert import_consisid(root / "total_train_data.txt", out, again, FACE, min_frames=4)["reused"] == 1
    assert again.detect_calls == 0
    strict = import_consisid(root / "total_train_data.txt", tmp_path / "strict", again, FACE, min_frames=49)
    assert strict["outcomes"] == {"skipped: too_short": 1, "skipped: missing_video": 1}


def test_the_verb_imports_and_a_bad_list_file_is_a_clear_error(consisid_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, _, _ = consisid_tree
    small = ["clip.num_frames=4", "clip.frame_stride=1"]
    source = f"data.source={root / 'total_train_data.txt'}"
    main(["preprocess", "data.importer=consisid", source, f"data.out={tmp_path / 'out'}", *small])
    assert [e["id"] for e in read_manifest(tmp_path / "out" / "manifest.jsonl")] == ["clip_001-0"]
    (root / "bad.txt").write_text("videos,captions.json\n")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["preprocess", "data.importer=consisid", f"data.source={root / 'bad.txt'}", f"data.out={tmp_path / 'x'}"])
    assert "bad.txt:1: expected `videos_dir,captions.json,anno_base`" in capsys.readouterr().err
