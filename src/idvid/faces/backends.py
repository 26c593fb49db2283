"""Face backends are plugins (kind ``face_backend``), picked by name: ``face=dlib|insightface`` in every verb."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idvid.faces.types import FaceAnalyzer
from idvid.registry import REGISTRIES, PluginKind, build


def face_backend_names() -> list[str]:
    return [entry.name for entry in REGISTRIES[PluginKind.FACE_BACKEND].entries()]


def build_face_analyzer(name: str, **options) -> FaceAnalyzer:
    """The face analyzer registered as ``name`` (the core's: "dlib", "insightface"), built with ``options``.

    Both core backends take ``models_dir``: dlib defaults to the face_recognition_models package,
    insightface needs the antelopev2 folder.
    """
    return build(PluginKind.FACE_BACKEND, name, **options)


def face_analyzer_from_config(face: Mapping[str, Any] | None) -> FaceAnalyzer:
    """The face backend of a verb's ``face`` node, ``{"name": ..., "options": {...}}`` (None: dlib, its defaults)."""
    face = face or {"name": "dlib"}
    return build_face_analyzer(str(face["name"]), **dict(face.get("options") or {}))
