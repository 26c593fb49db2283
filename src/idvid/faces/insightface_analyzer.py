"""Paper-faithful face analyzer: insightface's antelopev2 (SCRFD-10G detector + ArcFace glintr100, 512-d).

ConsisID detects and embeds faces with these two models (kept at
``<ckpt>/face_encoder/models/antelopev2/`` in its released code). They run on CPU through
onnxruntime from a local folder; nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from idvid.faces.types import Face, check_rgb_uint8
from idvid.registry import register_face_backend

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
ANTELOPEV2_FILES = (DETECTOR_FILE, RECOGNIZER_FILE)


def check_antelopev2_dir(models_dir: str | Path) -> Path:
    """Return ``models_dir`` as a Path, or raise FileNotFoundError naming every missing file."""
    root = Path(models_dir).expanduser()
    missing = [name for name in ANTELOPEV2_FILES if not (root / name).is_file()]
    if missing:
        where = "folder does not exist" if not root.is_dir() else f"missing {', '.join(missing)}"
        raise FileNotFoundError(
            f"insightface antelopev2 model files not found in {root} ({where}); put {', '.join(missing)} "
            f"in that folder (antelopev2 comes from insightface's model zoo: download it elsewhere and copy "
            f"the .onnx files over, e.g. to ConsisID's <ckpt>/face_encoder/models/antelopev2/) or pass "
            f"models_dir= pointing at the folder that holds {' and '.join(ANTELOPEV2_FILES)}"
        )
    return root


@functools.lru_cache(maxsize=4)
def _load_models(models_dir: str) -> tuple[object, object]:
    # Cached: building the two onnxruntime sessions is slow, and analyzers are created often.
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    root = Path(models_dir)
    models = []
    for name, kind in ((DETECTOR_FILE, SCRFD), (RECOGNIZER_FILE, ArcFaceONNX)):
        # insightface picks the model class from the graph's inputs and outputs.
        model = get_model(str(root / name), providers=["CPUExecutionProvider"])
        if not isinstance(model, kind):
            raise ValueError(
                f"{root / name} is not a {kind.__name__} model (insightface loaded it as "
                f"{type(model).__name__}); put antelopev2's {name} there"
            )
        models.append(model)
    return models[0], models[1]


@register_face_backend("insightface")
class InsightFaceAnalyzer:
    """antelopev2 SCRFD detection (5 keypoints) + ArcFace identity embedding, on CPU.

    models_dir: the folder holding ``scrfd_10g_bnkps.onnx`` and ``glintr100.onnx``.
    det_size: the square detector input in pixels (images are letterboxed to it), ConsisID's 640.
    det_thresh: detector score threshold, ConsisID's 0.5.
    Faces carry no 68-point landmarks (``landmarks`` is None). ``embedding_dim`` is read from the
    recognizer (512 for glintr100). Embeddings are L2-normalised as the FaceAnalyzer protocol
    requires (ConsisID feeds the raw ArcFace feature, whose norm is not 1).
    """

    def __init__(self, models_dir: str | Path | None, det_size: int = 640, det_thresh: float = 0.5):
        if models_dir is None:
            raise FileNotFoundError(
                f"the insightface backend needs models_dir= (face.options.models_dir= on the command line): the folder "
                f"holding antelopev2's {' and '.join(ANTELOPEV2_FILES)}"
            )
        if int(det_size) <= 0 or int(det_size) % 32:
            raise ValueError(f"det_size must be a positive multiple of 32 (the coarsest SCRFD stride), got {det_size}")
        if not 0.0 < float(det_thresh) < 1.0:
            raise ValueError(f"det_thresh must be in (0, 1), got {det_thresh}")
        self.models_dir = check_antelopev2_dir(models_dir)
        self.det_size = int(det_size)
        self.det_thresh = float(det_thresh)
        self._detector, self._recognizer = _load_models(str(self.models_dir.resolve()))
        width = self._recognizer.output_shape[-1]
        if not isinstance(width, int):
            raise ValueError(f"{self.models_dir / RECOGNIZER_FILE} has no fixed embedding width: {width!r}")
        self.embedding_dim = width

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces scoring >= det_thresh, boxes and keypoints in image pixels, largest box first."""
        bgr = cv2.cvtColor(check_rgb_uint8(image), cv2.COLOR_RGB2BGR)
        size = (self.det_size, self.det_size)
        boxes, kpss = self._detector.detect(bgr, input_size=size, det_thresh=self.det_thresh)
        faces = [
            Face(box=tuple(float(v) for v in box[:4]), score=float(box[4]), kps=kps.astype(np.float32))
            for box, kps in zip(boxes, kpss)
        ]
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """L2-normalised ArcFace embedding of the face aligned by its 5 keypoints (insightface's norm_crop)."""
        from insightface.utils.face_align import norm_crop

        bgr = cv2.cvtColor(check_rgb_uint8(image), cv2.COLOR_RGB2BGR)
        kps = np.asarray(face.kps, dtype=np.float32)
        crop = norm_crop(bgr, landmark=kps, image_size=self._recognizer.input_size[0])
        feature = np.asarray(self._recognizer.get_feat(crop), dtype=np.float32).reshape(-1)
        return (feature / max(float(np.linalg.norm(feature)), 1e-12)).astype(np.float32)
