"""Metrics of portrait animation: lip sync against the video's own audio, and closeness to a ground truth.

* ``sync``: Sync-C and Sync-D (SyncNet, idvid.evaluation.syncnet) of each video against its audio track;
  NaN for a video without audio (``sync_skipped`` says why).
* ``lpips``: LPIPS (the ``lpips`` package, AlexNet) between each generated frame and the same frame of the
  ground-truth video (``targets=DIR``: ``NAME.mp4`` beside ``videos/NAME.mp4``, e.g. the driving video of a
  self-reenactment), averaged over the frames both have; NaN without a target.
* ``fvd``: the Fréchet distance between I3D features of the generated videos and of the targets (a set
  number, ``fvd``), from the TorchScript I3D of StyleGAN-V's FVD code (``i3d_torchscript.pt``, the
  Kinetics-400 I3D ported from TensorFlow Hub), 16 frames a clip at 224 x 224.

Each loads its model from a local path (evaluate's ``models``) and is reported unavailable, naming it,
when that is missing.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from idvid.data.audio import has_audio_stream, load_audio
from idvid.data.video_io import probe_video
from idvid.evaluation import fid
from idvid.evaluation.identity import largest_faces
from idvid.evaluation.metrics import Metric, VideoContext, build_detector
from idvid.evaluation.syncnet import load_syncnet, sync_score
from idvid.registry import register_metric

ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # what torchvision's AlexNet_Weights.DEFAULT downloads
I3D_FILE = "i3d_torchscript.pt"
FVD_FRAMES, FVD_SIZE = 16, 224


@register_metric("sync")
class SyncGroup(Metric):
    """Sync-C (higher: in sync) and Sync-D (lower: in sync) of every video against its own audio track."""

    def __init__(self, model, detector):
        self.model, self.detector = model, detector

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "SyncGroup":
        return cls(load_syncnet(cfg["models"]["syncnet"], device), build_detector(cfg))

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        nothing = {"sync_c": math.nan, "sync_d": math.nan}
        if ctx.video_path is None or not has_audio_stream(ctx.video_path):
            return {**nothing, "sync_skipped": "no audio track"}
        faces = largest_faces(self.detector, list(ctx.frames))
        if not any(face is not None for face in faces):
            return {**nothing, "sync_skipped": "no face"}
        boxes = np.array([face.box if face is not None else (np.nan,) * 4 for face in faces], np.float32)
        fps = probe_video(ctx.video_path).fps or 25.0
        score = sync_score(self.model, ctx.frames, boxes, load_audio(ctx.video_path), fps)
        if score is None:
            return {**nothing, "sync_skipped": "shorter than SyncNet's 0.2 s window"}
        return {"sync_c": score.confidence, "sync_d": score.distance, "sync_skipped": ""}


def load_lpips(alexnet_weights: str | Path, device: str):
    """The ``lpips`` package's AlexNet LPIPS: its own linear layers (in the package), AlexNet from a local file."""
    path = Path(alexnet_weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"AlexNet weights for LPIPS not found: {path}; put torchvision's {ALEXNET_WEIGHTS_FILE} there or set "
            f"models.alexnet=/path/to/{ALEXNET_WEIGHTS_FILE}"
        )
    try:
        import lpips
    except ImportError as err:
        raise ImportError(f"LPIPS needs the lpips package ({err}); pip install lpips==0.1.4") from err
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)  # pnet_rand: no download
    features = torch.load(path, map_location="cpu", weights_only=True)
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # torchvision's features.N conv -> lpips' net.sliceK.N
    backbone = {
        f"slice{k}.{n}.{p}": features[f"features.{n}.{p}"] for n, k in slices.items() for p in ("weight", "bias")
    }
    model.net.load_state_dict(backbone)
    return model.eval().to(device)


@register_metric("lpips")
class LpipsGroup(Metric):
    """Mean LPIPS (AlexNet) between each generated frame and the target's frame at the same index."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "LpipsGroup":
        return cls(load_lpips(cfg["models"]["alexnet"], device), device)

    @torch.no_grad()
    def video(self, ctx: VideoContext) -> dict[str, Any]:
        if ctx.target is None:
            return {"lpips": math.nan}
        count = min(len(ctx.frames), len(ctx.target))
        height, width = ctx.frames.shape[1:3]
        target = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in ctx.target[:count]])
        distances = [
            float(self.model(_unit(ctx.frames[i : i + 1], self.device), _unit(target[i : i + 1], self.device)))
            for i in range(count)
        ]
        return {"lpips": float(np.mean(distances))}


def load_i3d(path: str | Path, device: str) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D for FVD not found: {path}; put StyleGAN-V's {I3D_FILE} (TorchScript, Kinetics-400 I3D) there "
            f"or set models.i3d=/path/to/{I3D_FILE}"
        )
    return torch.jit.load(str(path), map_location=device).eval()


@register_metric("fvd")
class FvdGroup(Metric):
    """FVD between the generated videos and their targets (set level; needs two or more of each)."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.generated: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    @classmethod
    def from_config(cls, cfg: dict, out: Path, device: str) -> "FvdGroup":
        return cls(load_i3d(cfg["models"]["i3d"], device), device)

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> np.ndarray:
        """I3D features of FVD_FRAMES evenly spread frames at FVD_SIZE (StyleGAN-V's call: inputs in [-1, 1])."""
        picked = frames[np.linspace(0, len(frames) - 1, FVD_FRAMES).round().astype(int)]
        resized = np.stack([cv2.resize(f, (FVD_SIZE, FVD_SIZE), interpolation=cv2.INTER_AREA) for f in picked])
        clip = _unit(resized, self.device).permute(1, 0, 2, 3)[None]  # [1, 3, T, H, W]
        return self.model(clip, rescale=False, resize=False, return_features=True).double().cpu().numpy()[0]

    def video(self, ctx: VideoContext) -> dict[str, Any]:
        if ctx.target is not None:
            self.generated.append(self.features(ctx.frames))
            self.targets.append(self.features(ctx.target))
        return {}

    def finish(self, out: Path) -> dict[str, Any]:
        if len(self.generated) < 2:
            return {"fvd": math.nan}  # one video per side has no spread: no distribution to compare
        return {"fvd": fid.set_fid(np.stack(self.targets), np.stack(self.generated))}


def _unit(frames: np.ndarray, device: str) -> torch.Tensor:
    """[N, H, W, 3] RGB uint8 -> [N, 3, H, W] float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1.0
