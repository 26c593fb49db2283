"""The insightface (antelopev2) backend, run on tiny ONNX stand-ins loaded by the real loading code.

The stand-ins (idvid.faces.tiny_insightface) are not face models: the detector fires on pure red
(stride 32) and pure green (stride 16) cells with designed boxes and keypoints, and the recognizer
is a seeded fixed function of the crop. So every expected value below is computed from that design.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idvid.faces import (
    DlibFaceAnalyzer,
    FaceAnalyzer,
    InsightFaceAnalyzer,
    build_face_analyzer,
)
from idvid.faces import tiny_insightface as tiny
from idvid.faces.insightface_analyzer import DETECTOR_FILE, RECOGNIZER_FILE

DET_SIZE = 640


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tiny.write_tiny_antelopev2(tmp_path_factory.mktemp("antelopev2"))


@pytest.fixture(scope="module")
def analyzer(models_dir):
    return InsightFaceAnalyzer(models_dir, det_size=DET_SIZE)


def expected_face(cell_xy: tuple[int, int], stride: int, det_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(box, kps) in image pixels for the anchor at feature cell ``cell_xy``, from the stand-in's design."""
    anchor = np.array(cell_xy, dtype=np.float32) * stride  # SCRFD anchors sit at their cell's top-left corner
    left, top, right, bottom = tiny.BOX_DISTANCES
    box = np.array(
        [anchor[0] - left * stride, anchor[1] - top * stride, anchor[0] + right * stride, anchor[1] + bottom * stride]
    )
    kps = anchor + tiny.keypoint_offsets() * stride
    return box / det_scale, kps / det_scale


def red_and_green_image() -> np.ndarray:
    """320x240 RGB: letterboxed to 640x480 (scale 2), the red square fills stride-32 cell (10, 6)
    and the green one stride-16 cell (5, 5)."""
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[96:112, 160:176] = (255, 0, 0)
    rgb[40:48, 40:48] = (0, 255, 0)
    return rgb


def test_missing_folder_and_files_are_named(tmp_path, models_dir):
    with pytest.raises(
        FileNotFoundError,
        match=f"{tmp_path / 'nowhere'}.*does not exist.*{DETECTOR_FILE}, {RECOGNIZER_FILE}.*model zoo",
    ):
        InsightFaceAnalyzer(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / DETECTOR_FILE).write_bytes((models_dir / DETECTOR_FILE).read_bytes())
    with pytest.raises(FileNotFoundError, match=f"in {partial} \\(missing {RECOGNIZER_FILE}\\)") as error:
        build_face_analyzer("insightface", models_dir=partial)
    assert f"{DETECTOR_FILE}," not in str(error.value).split("(")[1]  # the present file is not listed as missing
    with pytest.raises(FileNotFoundError, match="needs models_dir=.*face.options.models_dir="):
        InsightFaceAnalyzer(None)


def test_wrong_model_in_a_slot_is_a_clear_error(tmp_path, models_dir):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / DETECTOR_FILE).write_bytes((models_dir / RECOGNIZER_FILE).read_bytes())
    (swapped / RECOGNIZER_FILE).write_bytes((models_dir / RECOGNIZER_FILE).read_bytes())
    with pytest.raises(ValueError, match=f"{DETECTOR_FILE} is not a SCRFD model .*ArcFaceONNX"):
        InsightFaceAnalyzer(swapped)


def test_stand_ins_load_through_insightface_routing(analyzer):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(analyzer, FaceAnalyzer)
    assert isinstance(analyzer._detector, SCRFD) and analyzer._detector.use_kps
    assert isinstance(analyzer._recognizer, ArcFaceONNX)
    assert analyzer.embedding_dim == tiny.TINY_EMBEDDING_DIM  # read from the model, not assumed 512


def test_detect_returns_the_designed_boxes_and_keypoints_largest_first(analyzer):
    faces = analyzer.detect(red_and_green_image())
    assert len(faces) == 2
    red, green = faces  # red's box is 4x green's area; green scores higher, so this is not score order
    assert red.area == 4 * green.area and green.score > red.score > 0.9
    for face, (cell, stride) in zip(faces, [((10, 6), 32), ((5, 5), 16)]):
        box, kps = expected_face(cell, stride, det_scale=2.0)
        np.testing.assert_allclose(face.box, box, atol=1e-3)
        np.testing.assert_allclose(face.kps, kps, atol=1e-3)
        assert face.kps.dtype == np.float32 and face.kps.shape == (5, 2) and face.landmarks is None
        assert (face.kps[0, 0] < face.kps[1, 0]) and face.kps[0, 1] < face.kps[3, 1]  # ArcFace order
    assert analyzer.detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_detect_takes_rgb(analyzer):
    rgb = red_and_green_image()
    # Blue is neither colour the stand-in fires on: a BGR image passed as RGB turns red into blue.
    bgr_by_mistake = rgb[..., ::-1].copy()
    assert [f.area for f in analyzer.detect(bgr_by_mistake)] == [analyzer.detect(rgb)[1].area]  # green only
    with pytest.raises(ValueError, match="expected an RGB uint8 image"):
        analyzer.detect(rgb.astype(np.float32))


def test_det_size_and_threshold_are_used(models_dir):
    # At det_size 320 the image is not upscaled: the 16 px red square no longer fills a 32 px cell.
    assert InsightFaceAnalyzer(models_dir, det_size=320).detect(red_and_green_image()) == []
    strict = InsightFaceAnalyzer(models_dir, det_size=DET_SIZE, det_thresh=0.97)
    assert len(strict.detect(red_and_green_image())) == 1  # green (0.99) only; red scores 0.95
    with pytest.raises(ValueError, match="det_size must be a positive multiple of 32 .*got 100"):
        InsightFaceAnalyzer(models_dir, det_size=100)
    with pytest.raises(ValueError, match="det_thresh must be in \\(0, 1\\), got 1.5"):
        InsightFaceAnalyzer(models_dir, det_thresh=1.5)


def test_embed_is_insightface_arcface_on_the_bgr_image(analyzer):
    from insightface.utils.face_align import norm_crop

    rng = np.random.default_rng(0)
    rgb = red_and_green_image()
    rgb[120:] = rng.integers(0, 256, (120, 320, 3), dtype=np.uint8)  # texture for the crops to differ on
    face = analyzer.detect(rgb)[0]
    emb = analyzer.embed(rgb, face)
    assert emb.shape == (analyzer.embedding_dim,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    # insightface's own recognition path on the BGR image, normalised:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    reference = analyzer._recognizer.get_feat(norm_crop(bgr, landmark=face.kps, image_size=112)).reshape(-1)
    np.testing.assert_allclose(emb, reference / np.linalg.norm(reference), atol=1e-6)
    # identical crops embed identically; other content, or the channel swap, embeds differently.
    np.testing.assert_array_equal(emb, analyzer.embed(rgb.copy(), face))
    assert float(emb @ analyzer.embed(rgb[..., ::-1].copy(), face)) < 0.999
    moved = face.__class__(box=face.box, score=face.score, kps=face.kps + np.float32([0, 40]))
    assert float(emb @ analyzer.embed(rgb, moved)) < 0.999


def test_factory_builds_each_backend_and_names_the_available_ones(models_dir):
    assert isinstance(build_face_analyzer("insightface", models_dir=models_dir, det_size=320), InsightFaceAnalyzer)
    assert isinstance(build_face_analyzer("dlib"), DlibFaceAnalyzer)
    with pytest.raises(
        KeyError, match="Unknown face_backend plugin 'retinaface'. Registered face_backend plugins: dlib, insightface"
    ):
        build_face_analyzer("retinaface")


def test_sample_reference_uses_the_chosen_backend(tmp_path, models_dir):
    from idvid.verbs.sample import reference_batch

    photo = tmp_path / "red.png"
    cv2.imwrite(str(photo), cv2.cvtColor(red_and_green_image(), cv2.COLOR_RGB2BGR))
    batch = reference_batch(
        photo, "a red square", 64, 64, {"name": "insightface", "options": {"models_dir": str(models_dir)}}
    )
    assert batch["ref_embedding"].shape == (1, tiny.TINY_EMBEDDING_DIM)
    assert batch["ref_image"].shape == batch["ref_kps_image"].shape == (1, 3, 64, 64)
    assert (batch["ref_image"][0, :, 0, 0] == 1).all()  # outside the box's ellipse mask: whitened
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}.*{DETECTOR_FILE}"):
        reference_batch(
            photo, "x", 64, 64, {"name": "insightface", "options": {"models_dir": str(tmp_path / "nowhere")}}
        )


def test_box_ellipse_mask_stays_inside_the_box():
    from idvid.faces import box_ellipse_mask

    mask = box_ellipse_mask((100, 120), (20, 10, 80, 90))
    ys, xs = np.nonzero(mask)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask[50, 50] == 1
    assert xs.min() >= 20 and xs.max() <= 80 and ys.min() >= 10 and ys.max() <= 90
    assert mask[10, 20] == 0  # the box's corner is outside the ellipse
    with pytest.raises(ValueError, match="x1 > x0 and y1 > y0, got \\(5, 5, 5, 9\\)"):
        box_ellipse_mask((10, 10), (5, 5, 5, 9))
