"""Offline face tooling: detection, landmarks, embeddings, alignment, masks, keypoint images."""

from idvid.faces.align import ARCFACE_TEMPLATE_112, HEAD_MARGIN_SCALE, align_face, face_template, transform_points
from idvid.faces.backends import build_face_analyzer, face_analyzer_from_config, face_backend_names
from idvid.faces.dlib_analyzer import DlibFaceAnalyzer, default_models_dir, kps_from_landmarks
from idvid.faces.draw import draw_kps
from idvid.faces.insightface_analyzer import InsightFaceAnalyzer
from idvid.faces.masks import box_ellipse_mask, landmark_hull_mask, whiten_background
from idvid.faces.reference import reference_images
from idvid.faces.types import KPS_NAMES, Face, FaceAnalyzer

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "HEAD_MARGIN_SCALE",
    "KPS_NAMES",
    "DlibFaceAnalyzer",
    "Face",
    "FaceAnalyzer",
    "InsightFaceAnalyzer",
    "align_face",
    "box_ellipse_mask",
    "build_face_analyzer",
    "face_analyzer_from_config",
    "face_backend_names",
    "default_models_dir",
    "draw_kps",
    "face_template",
    "kps_from_landmarks",
    "landmark_hull_mask",
    "reference_images",
    "transform_points",
    "whiten_background",
]
