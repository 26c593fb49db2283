"""The metrics ``evaluate`` runs: registered plugins (kind ``metric``), each built from a local model path
or reported unavailable.

A metric (``Metric``) is built from the whole evaluate config by ``Metric.from_config(cfg, out,
device)``, turns one video (``VideoContext``) into per-video columns (``video``) and may add set-level
numbers at the end (``finish``). Building one that needs weights raises FileNotFoundError naming the
exact path it expected; ``evaluate`` records that message as the reason the metric is unavailable and
runs the others. A plugin adds a metric with ``@register_metric("my_lab.metric")`` on a ``Metric``
subclass; ``evaluate metrics=[..., my_lab.metric]`` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from idvid.errors import ConfigError
from idvid.evaluation import clip_metrics, fid, frequency
from idvid.evaluation.curricularface import load_curricularface
from idvid.evaluation.identity import (
    AlignedCropEmbedder,
    AnalyzerEmbedder,
    arcface_crop,
    identity_similarity,
    largest_faces,
    reference_face,
)
from idvid.faces import DlibFaceAnalyzer, Face, FaceAnalyzer, build_face_analyzer, face_analyzer_from_config
from idvid.registry import REGISTRIES, PluginKind, register_metric

# FID's crop: the ArcFace-aligned face at 224 (the official script's norm_crop), then resized to 299.
FID_CROP_SIZE = 224


@dataclass
class VideoContext:
    """One video to score: all frames, the evenly sampled ones with their largest faces, reference, prompt."""

    name: str
    frames: np.ndarray  # every decoded frame [T, H, W, 3] RGB uint8
    sampled: list[np.ndarray]  # the evenly sampled frames
    faces: list[Face | None]  # largest face of each sampled frame, from the evaluation's face detector
    reference_image: np.ndarray  # RGB (grey-padded when the face was only found that way)
    reference_face: Face
    prompt: str
    video_path: Path | None = None  # the file (its audio track, frame rate)
    target: np.ndarray | None = None  # the ground-truth video [T', H', W', 3] RGB uint8 (evaluate's targets=DIR)


class Metric:
    """Base class of metrics: per-video columns from ``video``, set-level numbers from ``finish``."""

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "Metric":
        """Build from the evaluate config (``models``, ``face`` ...); FileNotFoundError names a missing model."""
        raise NotImplementedError(f"{cls.__name__} must implement from_config(cfg, out, device)")

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement video(ctx)")

    def finish(self, out: Path) -> dict[str, Any]:
        return {}


class FaceSim(Metric):
    """Identity similarity with a given embedder on the evaluation detector's faces (dlib, CurricularFace)."""

    def __init__(self, name: str, embedder):
        self.name, self.embedder = name, embedder

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        result = identity_similarity(self.embedder, ctx.reference_image, ctx.reference_face, ctx.sampled, ctx.faces)
        return {self.name: result.score, f"{self.name}_frames_skipped": result.frames_skipped}


@register_metric("facesim_dlib")
class FaceSimDlib(FaceSim):
    """dlib's 128-d identity cosine; dlib embeds whichever detector found the face (it re-fits its landmarks)."""

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FaceSimDlib":
        return cls("facesim_dlib", AnalyzerEmbedder(DlibFaceAnalyzer(models_dir=_dlib_models_dir(cfg))))


@register_metric("facesim_cur")
class FaceSimCur(FaceSim):
    """FaceSim-Cur: CurricularFace cosine on 112-px aligned crops."""

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FaceSimCur":
        model = load_curricularface(cfg["models"]["curricularface"], device)
        return cls("facesim_cur", AlignedCropEmbedder(model, 112, device))


@register_metric("facesim_arc")
class FaceSimArc(Metric):
    """FaceSim-Arc: insightface detects and embeds (ArcFace), as the official script does."""

    name = "facesim_arc"

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer, self.embedder = analyzer, AnalyzerEmbedder(analyzer)

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FaceSimArc":
        return cls(insightface_analyzer(cfg["models"]["insightface"], EVALUATION_DET_SIZE))

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        found = reference_face(self.analyzer, ctx.reference_image)
        if found is None:
            return {"facesim_arc": math.nan, "facesim_arc_frames_skipped": len(ctx.sampled)}
        faces = largest_faces(self.analyzer, ctx.sampled)
        result = identity_similarity(self.embedder, *found, ctx.sampled, faces)
        return {"facesim_arc": result.score, "facesim_arc_frames_skipped": result.frames_skipped}


def insightface_analyzer(models_dir: str | Path, det_size: int = 320) -> FaceAnalyzer:
    """idvid's insightface backend (antelopev2) from a local folder; FileNotFoundError names missing files.

    det_size 320 is the official evaluation script's detector size (training data uses 640).
    """
    return build_face_analyzer("insightface", models_dir=str(models_dir), det_size=int(det_size))


@register_metric("clip")
class ClipGroup(Metric):
    """CLIPScore, CLIP-T, CLIP-I and CLIP temporal smoothness."""

    name = "clip"

    def __init__(self, embedder: clip_metrics.ClipEmbedder, bgr_compat: bool):
        self.embedder, self.bgr_compat = embedder, bgr_compat

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "ClipGroup":
        return cls(clip_metrics.ClipEmbedder(cfg["models"]["clip"], device), bool(cfg.get("clip_bgr_compat", False)))

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        frames = self.embedder.images(ctx.sampled)
        text = self.embedder.text(ctx.prompt)
        reference = self.embedder.images([ctx.reference_image])[0]
        # CLIPScore on RGB frames is 100 x CLIP-T of the embeddings above; only the compat flag re-embeds.
        if self.bgr_compat:
            score = clip_metrics.clip_score(self.embedder, ctx.sampled, ctx.prompt, bgr_compat=True)
        else:
            score = 100.0 * clip_metrics.mean_cosine_to(text, frames)
        return {
            "clipscore" + ("_bgr_compat" if self.bgr_compat else ""): score,
            "clip_t": clip_metrics.mean_cosine_to(text, frames),
            "clip_i": clip_metrics.mean_cosine_to(reference, frames),
            "smoothness_clip": clip_metrics.temporal_smoothness(self.embedder.images(list(ctx.frames))),
        }


@register_metric("dino")
class DinoGroup(Metric):
    """DINO identity similarity (reference vs frames) and DINO temporal smoothness."""

    name = "dino"

    def __init__(self, embedder: clip_metrics.DinoEmbedder):
        self.embedder = embedder

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "DinoGroup":
        return cls(clip_metrics.DinoEmbedder(cfg["models"]["dino"], device))

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        reference = self.embedder.images([ctx.reference_image])[0]
        return {
            "dino": clip_metrics.mean_cosine_to(reference, self.embedder.images(ctx.sampled)),
            "smoothness_dino": clip_metrics.temporal_smoothness(self.embedder.images(list(ctx.frames))),
        }


@register_metric("fid")
class FidGroup(Metric):
    """Per-video official per-frame FID; at the end, the proper FID of all generated crops vs all references."""

    name = "fid"

    def __init__(self, features: fid.FeatureExtractor):
        self.features = features
        self.reference_features: list[np.ndarray] = []
        self.generated_features: list[np.ndarray] = []

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FidGroup":
        return cls(fid.InceptionFeatures(cfg["models"]["inception"], device))

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        reference = self.features(arcface_crop(ctx.reference_image, ctx.reference_face, FID_CROP_SIZE)[None])[0]
        self.reference_features.append(reference)
        crops = [arcface_crop(f, face, FID_CROP_SIZE) for f, face in zip(ctx.sampled, ctx.faces) if face is not None]
        if not crops:
            return {"fid_face_per_frame": math.nan}
        features = self.features(np.stack(crops))
        self.generated_features.append(features)
        return {"fid_face_per_frame": fid.per_frame_fid_official(reference, features)}

    def finish(self, out: Path) -> dict[str, Any]:
        if not self.generated_features or len(self.reference_features) < 1:
            return {"fid_face": math.nan}
        generated = np.concatenate(self.generated_features)
        return {"fid_face": fid.set_fid(np.stack(self.reference_features), generated)}


@register_metric("frequency")
class FrequencyGroup(Metric):
    """Face-region spectra per video and per set, pictures in ``<out>/frequency/``, band amplitudes as columns."""

    name = "frequency"

    def __init__(self, config: frequency.FrequencyConfig, out: Path, full_frame_fallback: bool):
        self.config, self.out, self.full_frame_fallback = config, out / "frequency", full_frame_fallback
        self.spectra: list[np.ndarray] = []
        self.full_frame_videos = 0

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FrequencyGroup":
        settings = dict(cfg["frequency"])
        fallback = settings.pop("region_fallback", "full_frame")
        if fallback not in ("full_frame", "none", None):
            raise ValueError(f"frequency.region_fallback={fallback!r}; choose full_frame or none")
        return cls(frequency.FrequencyConfig(**settings), out, fallback == "full_frame")

    def _full_frame_crops(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        size = self.config.crop_size
        crops = []
        for frame in frames:
            side = min(frame.shape[:2])
            top, left = (frame.shape[0] - side) // 2, (frame.shape[1] - side) // 2
            crops.append(cv2.resize(frame[top : top + side, left : left + side], (size, size)))
        return crops

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        crops = frequency.face_crops(ctx.sampled, ctx.faces, self.config.crop_size)
        region = "face"
        if not crops:
            if not self.full_frame_fallback:
                return {"freq_low": math.nan, "freq_high": math.nan, "freq_high_minus_low": math.nan}
            crops, region = self._full_frame_crops(ctx.sampled), "full_frame"
            self.full_frame_videos += 1
        spectrum = frequency.mean_spectrum(crops)
        self.spectra.append(spectrum)
        profile = frequency.radial_profile(spectrum)
        frequency.write_png(self.out / f"{ctx.name}_spectrum.png", frequency.spectrum_image(spectrum))
        frequency.write_png(
            self.out / f"{ctx.name}_profile.png", frequency.profile_plot({ctx.name: profile}, self.config)
        )
        return {**frequency.band_amplitudes(profile, self.config), "freq_region": region}

    def finish(self, out: Path) -> dict[str, Any]:
        if not self.spectra:
            return {}
        spectrum = np.mean(self.spectra, axis=0)
        profile = frequency.radial_profile(spectrum)
        self.out.mkdir(parents=True, exist_ok=True)
        np.save(self.out / "set_spectrum.npy", spectrum)
        frequency.write_png(self.out / "set_spectrum.png", frequency.spectrum_image(spectrum))
        frequency.write_png(self.out / "set_profile.png", frequency.profile_plot({"set": profile}, self.config))
        bands = {f"set_{key}": value for key, value in frequency.band_amplitudes(profile, self.config).items()}
        return {**bands, "set_freq_full_frame_videos": self.full_frame_videos}


# The official evaluation script's insightface detector size (training data is detected at 640).
EVALUATION_DET_SIZE = 320


def face_backend_node(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The verb's ``face`` node ({name, options}) of an evaluate config (``cfg["models"]``: the model folders).

    insightface without ``models_dir`` reads ``models.insightface``; the old ``face.backend`` spelling is
    an error naming the new one.
    """
    face = dict(cfg.get("face") or {"name": "dlib"})
    old = sorted(set(face) & {"backend", "dlib_models_dir", "insightface_det_size"})
    if old:
        raise ConfigError(
            f"face.{old[0]} is the old spelling of the face backend setting.",
            "Every verb now takes face=dlib|insightface and face.options.<name>=<value>, e.g. face=insightface "
            "face.options.models_dir=/models/antelopev2 face.options.det_size=320.",
        )
    name, options = str(face.get("name", "dlib")), dict(face.get("options") or {})
    if name == "insightface" and options.get("models_dir") in (None, "???"):  # evaluate's own model folder
        options["models_dir"] = str(cfg["models"]["insightface"])
    return {"name": name, "options": options}


def build_detector(cfg: dict) -> FaceAnalyzer:
    """The face detector of the sampled frames: the ``face`` node's backend (insightface: models.insightface)."""
    return face_analyzer_from_config(face_backend_node(cfg))


def _dlib_models_dir(cfg: Mapping[str, Any]) -> str | None:
    face = face_backend_node(cfg)
    return face["options"].get("models_dir") if face["name"] == "dlib" else None


def metric_names() -> list[str]:
    """Every registered metric (the kit's and the plugins'), sorted."""
    return [entry.name for entry in REGISTRIES[PluginKind.METRIC].entries()]


def check_metric_names(names: list[str]) -> None:
    unknown = [name for name in names if name not in REGISTRIES[PluginKind.METRIC]]
    if unknown:
        raise ConfigError(
            f"unknown metric(s) {unknown} in metrics=; choose from {metric_names()}.",
            "A plugin's metrics appear once the plugin is installed (`python -m idvid plugins` lists them).",
        )


def build_group(name: str, cfg: dict, out: Path, device: str) -> Metric:
    """The registered metric ``name`` from the evaluate config; raises when its model is missing."""
    check_metric_names([name])
    return REGISTRIES[PluginKind.METRIC].get(name).from_config(cfg, out, device)
