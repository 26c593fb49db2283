"""Offline face tooling on the photos bundled with scikit-image and insightface."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from idvid.faces import (
    KPS_NAMES,
    DlibFaceAnalyzer,
    FaceAnalyzer,
    align_face,
    draw_kps,
    face_template,
    landmark_hull_mask,
    transform_points,
    whiten_background,
)
from idvid.faces.draw import KPS_COLORS

# Centre of the astronaut's face box as found by dlib HOG: (175, 76)-(265, 166).
ASTRONAUT_FACE_CENTRE = (220.0, 121.0)


@pytest.fixture(scope="module")
def analyzer() -> DlibFaceAnalyzer:
    return DlibFaceAnalyzer()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    root = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0])
    return cv2.cvtColor(cv2.imread(str(root / "data" / "images" / "t1.jpg")), cv2.COLOR_BGR2RGB)


def warped_view(image: np.ndarray, centre: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    """A 256x256 synthetic camera view centred on `centre`."""
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += np.array([128.0, 128.0]) - np.array(centre)
    return cv2.warpAffine(image, matrix, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_analyzer_satisfies_protocol(analyzer):
    assert isinstance(analyzer, FaceAnalyzer)
    assert analyzer.embedding_dim == 128
    assert KPS_NAMES[0] == "left_eye"


def test_astronaut_has_exactly_one_face_at_known_place(analyzer, astronaut):
    faces = analyzer.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert np.hypot((x0 + x1) / 2 - ASTRONAUT_FACE_CENTRE[0], (y0 + y1) / 2 - ASTRONAUT_FACE_CENTRE[1]) < 15
    assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32
    assert face.landmarks.shape == (68, 2)
    pad = 0.1 * (x1 - x0)
    assert ((face.kps[:, 0] > x0 - pad) & (face.kps[:, 0] < x1 + pad)).all()
    assert ((face.kps[:, 1] > y0 - pad) & (face.kps[:, 1] < y1 + pad)).all()
    left_eye, right_eye, nose, left_mouth, right_mouth = face.kps
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # "left" = image-left
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_score_threshold_drops_known_false_positive(astronaut):
    permissive = DlibFaceAnalyzer(min_score=0.0).detect(astronaut)
    assert len(permissive) == 2  # the real face and the low-scoring one near (126, 335)
    assert min(face.score for face in permissive) < 0.25


def test_group_photo_faces_sorted_largest_first(analyzer, t1):
    faces = analyzer.detect(t1)
    assert len(faces) == 6
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_embedding_is_unit_norm_128d(analyzer, astronaut):
    face = analyzer.detect(astronaut)[0]
    emb = analyzer.embed(astronaut, face)
    assert emb.shape == (128,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    # Without landmarks the analyzer re-fits them from the box and gets the same descriptor.
    face.landmarks = None
    np.testing.assert_allclose(analyzer.embed(astronaut, face), emb, atol=1e-5)


def test_same_person_closer_than_different_people(analyzer, t1):
    faces = analyzer.detect(t1)
    refs = [analyzer.embed(t1, face) for face in faces]
    subject = 1  # the clearest frontal face (highest HOG score); face 0 is tilted
    x0, y0, x1, y1 = faces[subject].box
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    views = [warped_view(t1, centre, angle, scale) for angle, scale in ((-6.0, 1.0), (5.0, 1.2))]
    embs = []
    for view in views:
        found = analyzer.detect(view)
        assert found, "the synthetic view should still show a detectable face"
        embs.append(analyzer.embed(view, found[0]))
    same = float(embs[0] @ embs[1])
    different = max(float(refs[i] @ refs[j]) for i in range(6) for j in range(i + 1, 6))
    assert same > different
    # Each view is also closest to the source face it was made from.
    for emb in embs:
        assert int(np.argmax([emb @ ref for ref in refs])) == subject


def test_align_face_puts_keypoints_on_template():
    size = 256
    template = face_template(size)
    # Keypoints in a 600x600 image: the template rotated 20 degrees, scaled 0.7 and moved.
    theta = np.deg2rad(20.0)
    rot = 0.7 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    kps = (template @ rot.T + np.array([250.0, 180.0])).astype(np.float32)
    image = np.zeros((600, 600, 3), dtype=np.uint8)
    for idx, (x, y) in enumerate(kps):
        cv2.circle(image, (int(round(x)), int(round(y))), 3, KPS_COLORS[idx], -1)
    crop, matrix = align_face(image, kps, size=size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8 and matrix.shape == (2, 3)
    np.testing.assert_allclose(transform_points(kps, matrix), template, atol=0.5)
    for idx in (0, 1):  # the drawn eye dots land on the template's eye positions
        near_colour = np.abs(crop.astype(int) - KPS_COLORS[idx]).sum(-1) < 60
        ys, xs = np.nonzero(near_colour)
        assert np.hypot(xs.mean() - template[idx, 0], ys.mean() - template[idx, 1]) < 2.0


def test_template_keeps_margin_around_face():
    template = face_template(512)
    assert template.min() > 0.25 * 512 and template.max() < 0.75 * 512  # head fits with room around it
    assert template[0, 1] < template[2, 1] < template[3, 1]


def test_align_face_rejects_bad_kps(astronaut):
    with pytest.raises(ValueError, match="kps"):
        align_face(astronaut, np.full((5, 2), np.nan, dtype=np.float32))


def test_hull_mask_covers_face_and_forehead(analyzer, astronaut):
    face = analyzer.detect(astronaut)[0]
    mask = landmark_hull_mask(astronaut.shape[:2], face.landmarks)
    assert mask.shape == astronaut.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    for x, y in face.kps.round().astype(int):
        assert mask[y, x] == 1
    brow_top = int(face.landmarks[17:27, 1].min())
    assert mask[: brow_top - 10].sum() > 0  # forehead above the brows is covered
    x0, y0, x1, y1 = face.box
    assert 0.5 * (x1 - x0) * (y1 - y0) < mask.sum() < 3.0 * (x1 - x0) * (y1 - y0)
    assert mask[400:, :].sum() == 0 and mask[:, :100].sum() == 0


def test_whiten_background_only_touches_outside():
    crop = np.full((8, 8, 3), 7, dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 3:6] = 1
    out = whiten_background(crop, mask)
    assert (out[mask == 1] == 7).all() and (out[mask == 0] == 255).all()
    assert (crop == 7).all()  # input untouched


@pytest.mark.parametrize("size", [64, 512])
def test_draw_kps_colours_and_scaling(size):
    kps = face_template(size)
    canvas = draw_kps((size, size), kps)
    assert canvas.shape == (size, size, 3) and canvas.dtype == np.uint8
    assert (canvas[0, 0] == 0).all() and (canvas[-1, -1] == 0).all()
    for idx, (x, y) in enumerate(kps.round().astype(int)):
        assert tuple(canvas[y, x]) == KPS_COLORS[idx]
    radius = max(1, round(10 * size / 512))
    x, y = kps[0].round().astype(int)
    assert tuple(canvas[y, x - radius]) == KPS_COLORS[0]  # disc size follows the canvas
    assert tuple(canvas[y, x - radius - 2]) != KPS_COLORS[0]


def test_missing_models_dir_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        DlibFaceAnalyzer(models_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "shape_predictor_68_face_landmarks.dat") in message
    assert "pip install face_recognition_models" in message


def test_detect_rejects_non_uint8(analyzer):
    with pytest.raises(ValueError, match="RGB uint8"):
        analyzer.detect(np.zeros((32, 32, 3), dtype=np.float32))
