"""Face backends by name, so configs and command lines pick one without code branches."""

from __future__ import annotations

from collections.abc import Callable

from idvid.faces.dlib_analyzer import DlibFaceAnalyzer
from idvid.faces.insightface_analyzer import InsightFaceAnalyzer
from idvid.faces.types import FaceAnalyzer

FACE_BACKENDS: dict[str, Callable[..., FaceAnalyzer]] = {
    "dlib": DlibFaceAnalyzer,
    "insightface": InsightFaceAnalyzer,
}


def build_face_analyzer(name: str, **kwargs) -> FaceAnalyzer:
    """The face analyzer called ``name`` ("dlib" or "insightface"), built with ``kwargs``.

    Both take ``models_dir``: dlib defaults to the face_recognition_models package, insightface
    needs the antelopev2 folder.
    """
    if name not in FACE_BACKENDS:
        raise ValueError(f"unknown face backend {name!r}; available: {', '.join(sorted(FACE_BACKENDS))}")
    return FACE_BACKENDS[name](**kwargs)
