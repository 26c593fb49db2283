"""Offline face analyzer on dlib: HOG detector, 68-point landmarks, 128-d ResNet embedding.

Everything runs on CPU from the model files shipped by `face_recognition_models`, so it
works without network access or a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from idvid.faces.types import Face, check_rgb_uint8
from idvid.registry import register_face_backend

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
RECOGNIZER_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def default_models_dir() -> Path | None:
    """Directory holding the dlib .dat files of `face_recognition_models`, if installed.

    Located with find_spec rather than imported: importing the package pulls in
    pkg_resources, which is missing on recent setuptools.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def kps_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """5 ArcFace-order keypoints from 68 iBUG landmarks: eye centres, nose tip, mouth corners."""
    lm = np.asarray(landmarks, dtype=np.float32)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _load_models(models_dir: str) -> tuple[object, object, object]:
    # Cached: loading the two .dat files takes ~1 s, and analyzers are created often.
    import dlib

    root = Path(models_dir)
    for name in (PREDICTOR_FILE, RECOGNIZER_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"dlib model file not found: {root / name}; install it with "
                "`pip install face_recognition_models` or pass models_dir= pointing at "
                f"a folder that contains {PREDICTOR_FILE} and {RECOGNIZER_FILE}"
            )
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(root / PREDICTOR_FILE))
    recognizer = dlib.face_recognition_model_v1(str(root / RECOGNIZER_FILE))
    return detector, predictor, recognizer


@register_face_backend("dlib")
class DlibFaceAnalyzer:
    """HOG face detector + 68-point landmarks + 128-d dlib ResNet identity embedding.

    upsample: image upsamplings before HOG detection (1 finds faces down to ~40 px).
    min_score: HOG score threshold. Real faces in the bundled photos score >= 0.36 while
    the known false positive on the astronaut photo scores ~0.12, hence the default 0.25.
    """

    embedding_dim: int = 128

    def __init__(self, models_dir: str | Path | None = None, upsample: int = 1, min_score: float = 0.25):
        if models_dir is None:
            found = default_models_dir()
            if found is None:
                raise FileNotFoundError(
                    f"dlib model file not found: package face_recognition_models is not "
                    f"installed, so {PREDICTOR_FILE} has no default location; install it with "
                    "`pip install face_recognition_models` or pass models_dir="
                )
            models_dir = found
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.models_dir = Path(models_dir)
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._detector, self._predictor, self._recognizer = _load_models(str(self.models_dir))

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces scoring >= min_score with plausible landmarks, largest box first."""
        image = check_rgb_uint8(image)
        rects, scores, _ = self._detector.run(image, self.upsample, 0)
        faces = []
        for rect, score in zip(rects, scores):
            if score < self.min_score:
                continue
            shape = self._predictor(image, rect)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            kps = kps_from_landmarks(landmarks)
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            if not _plausible(kps, box):
                continue
            faces.append(Face(box=box, score=float(score), kps=kps, landmarks=landmarks))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """L2-normalised 128-d descriptor; uses face.landmarks when present, else re-fits them."""
        import dlib

        image = check_rgb_uint8(image)
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        rect = dlib.rectangle(x0, y0, x1, y1)
        if face.landmarks is not None and len(face.landmarks) == 68:
            points = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
            shape = dlib.full_object_detection(rect, points)
        else:
            shape = self._predictor(image, rect)
        desc = np.asarray(self._recognizer.compute_face_descriptor(image, shape), dtype=np.float32)
        return (desc / max(float(np.linalg.norm(desc)), 1e-12)).astype(np.float32)


def _plausible(kps: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Reject landmark fits that cannot be an upright face (eyes below mouth, eyes collapsed)."""
    x0, y0, x1, y1 = box
    width = max(x1 - x0, 1.0)
    eye_dist = float(np.linalg.norm(kps[1] - kps[0]))
    eyes_y = float(kps[:2, 1].mean())
    mouth_y = float(kps[3:, 1].mean())
    return kps[0, 0] < kps[1, 0] and eyes_y < mouth_y and 0.2 * width < eye_dist < 0.8 * width
