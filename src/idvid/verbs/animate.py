"""The `animate` verb: a checkpoint + a reference photo + driving audio and/or a driving video -> an mp4.

    python -m idvid animate CKPT --image REF [--drive VIDEO] [--audio AUDIO] [--motion-scale A]
        [--audio-scale S] --out OUT.mp4 [face=dlib|insightface face.options...]

Method-neutral: it builds the batch entries that training data gives audio- and video-driven models
(idvid.data.dataset: ``audio_mel``, ``audio_frame_times``, ``has_audio``, the driving frames as ``video``
with their ``frame_*`` face annotations and eye/mouth boxes) beside the reference's sampling entries, and
samples through the kit's one sampling path (``generate``). Any model whose conditioners read those keys
animates; the core names no method. Without ``--audio`` the audio entries are zeros (``has_audio``
False); without ``--drive`` the driving frames are zeros and have no face. ``--motion-scale`` scales the
driving head motion (idvid.sampling.motion); ``--audio-scale`` sets every injector option named
``audio_scale`` of the checkpoint's injectors. The audio is muxed into the output.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from idvid.data.audio import load_audio, log_mel, mel_window
from idvid.data.dataset import centre_crop_box, fit_to_size, to_unit_range
from idvid.data.video_io import probe_video, read_mp4, write_mp4
from idvid.errors import ConfigError, UserError
from idvid.faces import face_analyzer_from_config
from idvid.faces.reference import NUM_LANDMARKS
from idvid.faces.regions import region_boxes
from idvid.interop import load_module
from idvid.output_paths import check_output_file
from idvid.registry import REGISTRIES, PluginKind
from idvid.sampling.motion import apply_warps, motion_warps
from idvid.verbs.sample import check_old_face_flags, face_node, reference_batch

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a person talking to the camera."
DEFAULT_FPS = 8  # the demo's frame rate; a driving video gives its own
WHISPER_MEL_FRAMES = 3000  # Whisper's 30 s: the audio window when the model's conditioners do not say theirs


def with_audio_scale(injectors: Mapping[str, Any], audio_scale: float) -> dict[str, Any]:
    """The injector configs with ``audio_scale`` set on every injector whose class takes that option."""
    updated, changed = {}, []
    for label, node in injectors.items():
        if node is not None and _takes_option(node["name"], "audio_scale"):
            node = {**node, "audio_scale": float(audio_scale)}
            changed.append(label)
        updated[label] = node
    if not changed:
        names = {label: node["name"] for label, node in injectors.items() if node is not None}
        raise ConfigError(
            f"--audio-scale given, but none of the checkpoint's injectors ({names}) has an audio_scale option",
            "drop --audio-scale: this model has no audio amplitude to set",
        )
    log.info("audio_scale=%g set on injectors %s", audio_scale, changed)
    return updated


def model_audio_mel_frames(module: Any) -> int | None:
    """The ``audio_mel`` window the model's conditioners take (their ``audio_mel_frames``), or None if none says.

    It comes with the checkpoint: each conditioner is rebuilt from its saved config (and its local weights),
    so a demo checkpoint's tiny Whisper says 200 and a Whisper-tiny one 3000."""
    windows = {
        label: int(conditioner.audio_mel_frames)
        for label, conditioner in module.conditioners.items()
        if conditioner.audio_mel_frames is not None
    }
    if len(set(windows.values())) > 1:
        raise ConfigError(
            f"The checkpoint's conditioners take audio windows of different lengths: {windows} (mel frames).",
            "Pass --audio-mel-frames N to choose one for the audio_mel built from --audio.",
        )
    return next(iter(windows.values()), None)


def _takes_option(injector: str, option: str) -> bool:
    return option in inspect.signature(REGISTRIES[PluginKind.INJECTOR].get(injector)).parameters


def audio_inputs(waveform: np.ndarray | None, frame_times: np.ndarray, mel_frames: int, mel_bins: int) -> dict:
    """``audio_mel`` [1, bins, mel_frames], ``audio_frame_times`` [1, F], ``has_audio`` [1] (zeros without audio)."""
    mel = log_mel(waveform, mel_bins) if waveform is not None else np.zeros((mel_bins, 0), np.float32)
    window, times = mel_window(mel, frame_times, mel_frames)
    return {
        "audio_mel": torch.from_numpy(window)[None],
        "audio_frame_times": torch.from_numpy(times)[None],
        "has_audio": torch.tensor([waveform is not None]),
    }


def drive_inputs(
    frames: np.ndarray | None, num_frames: int, height: int, width: int, analyzer, motion_scale: float
) -> dict:
    """The driving frames as ``video`` [1, F, 3, H, W] with their face annotations, as the dataset gives them.

    The largest face of each frame is detected at the video's size; the frames are warped by the motion
    scale there, then centre-cropped and resized to H x W with their points. None: zero frames, no face.
    """
    if frames is None:
        points = {"frame_boxes": 4, "frame_kps": (5, 2), "frame_landmarks": (NUM_LANDMARKS, 2),
                  "frame_eye_boxes": 4, "frame_mouth_boxes": 4}  # fmt: skip
        return _batched({
            "video": torch.zeros(num_frames, 3, height, width),
            "frame_has_face": torch.zeros(num_frames, dtype=torch.bool),
            **{key: np.full((num_frames, *np.atleast_1d(shape)), np.nan, np.float32) for key, shape in points.items()},
        })  # fmt: skip
    frames = frames[:num_frames]
    boxes = np.full((num_frames, 2, 2), np.nan, np.float32)
    kps = np.full((num_frames, 5, 2), np.nan, np.float32)
    landmarks = np.full((num_frames, NUM_LANDMARKS, 2), np.nan, np.float32)
    for t, frame in enumerate(frames):
        faces = analyzer.detect(frame)
        if faces:
            boxes[t], kps[t] = np.reshape(faces[0].box, (2, 2)), faces[0].kps
            if faces[0].landmarks is not None and len(faces[0].landmarks) == NUM_LANDMARKS:
                landmarks[t] = faces[0].landmarks
    has_face = np.isfinite(kps).all(axis=(1, 2))
    if not has_face.any():
        raise UserError("no face in any frame of the driving video", "give a --drive video that shows one face")
    if motion_scale != 1.0:
        frames, (boxes, kps, landmarks) = apply_warps(frames, [boxes, kps, landmarks], motion_warps(kps, motion_scale))
        # The box's turned corners, back to x0 <= x1 and y0 <= y1 (their bounds).
        boxes = np.stack([boxes.min(axis=1), boxes.max(axis=1)], axis=1)
    x0, y0, crop_w, crop_h = centre_crop_box(*frames.shape[1:3], height, width)
    scale = np.array([width / crop_w, height / crop_h], np.float32)

    def to_pixels(points: np.ndarray) -> np.ndarray:  # the video's pixels -> the cropped and resized frames'
        return ((points - np.array([x0, y0], np.float32)) * scale).astype(np.float32)

    landmarks = to_pixels(landmarks)
    eye_boxes, mouth_boxes = region_boxes(landmarks)
    return _batched({
        "video": to_unit_range(np.stack([fit_to_size(frame, height, width, cv2.INTER_AREA) for frame in frames])),
        "frame_has_face": torch.from_numpy(has_face),
        "frame_boxes": to_pixels(boxes).reshape(-1, 4), "frame_kps": to_pixels(kps), "frame_landmarks": landmarks,
        "frame_eye_boxes": eye_boxes, "frame_mouth_boxes": mouth_boxes,
    })  # fmt: skip


def _batched(entries: dict) -> dict:
    return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)[None] for k, v in entries.items()}


def checkpoint_injectors(checkpoint: str | Path) -> dict[str, Any]:
    """The injector configs a kit checkpoint was built with (its saved hyperparameters)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; give a .ckpt written by `fit` or `convert`.")
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(saved.get("hyper_parameters", {}).get("injectors") or {})


def animate(
    checkpoint: str,
    image: str,
    out: str,
    drive: str | None = None,
    audio: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    motion_scale: float = 1.0,
    audio_scale: float | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    fps: float | None = None,
    steps: int = 50,
    guidance: float = 6.0,
    seed: int = 0,
    ema: bool = False,
    face: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    audio_mel_frames: int | None = None,
    audio_mel_bins: int = 80,
) -> Path:
    """Animate `image` by `audio` and/or `drive` into `out` (an existing `out` only with `overwrite`).

    Inputs are read and checked before the checkpoint loads: a missing audio stream or a driving video
    without a face fails at once. fps: of the output and of the audio windows (default: the driving
    video's, else 8). audio_mel_frames: the audio window (default: the one the checkpoint's conditioners
    take, ``model_audio_mel_frames``, else Whisper's 3000).
    """
    if drive is None and audio is None:
        raise ConfigError("animate needs something to drive the face", "pass --audio AUDIO, --drive VIDEO or both")
    out_path = check_output_file(out, overwrite)
    waveform = load_audio(audio) if audio is not None else None
    frames = read_mp4(drive) if drive is not None else None
    fps = float(fps or (probe_video(drive).fps if drive is not None else 0) or DEFAULT_FPS)
    overrides = (
        {"injectors": with_audio_scale(checkpoint_injectors(checkpoint), audio_scale)}
        if audio_scale is not None
        else {}
    )
    module = load_module(checkpoint, ema=ema, **overrides).eval()
    audio_mel_frames = audio_mel_frames or model_audio_mel_frames(module) or WHISPER_MEL_FRAMES
    default_frames, default_height, default_width = module.backbone.default_video_size
    num_frames, height, width = num_frames or default_frames, height or default_height, width or default_width
    if frames is not None and len(frames) < num_frames:
        raise UserError(
            f"the driving video {drive} has {len(frames)} frames but {num_frames} are to be made",
            f"pass --frames with at most {len(frames)} frames the backbone accepts, or a longer --drive video",
        )
    batch = {
        **reference_batch(Path(image), prompt, height, width, face),
        **drive_inputs(frames, num_frames, height, width, face_analyzer_from_config(face), motion_scale),
        **audio_inputs(waveform, np.arange(num_frames) / fps, audio_mel_frames, audio_mel_bins),
    }
    video = module.generate(batch, num_frames, height, width, steps, guidance, seed=seed, progress=True)
    pixels = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    sound = None
    if waveform is not None:  # the part under the frames, padded with silence when the audio is shorter
        sound = np.zeros(int(round(num_frames / fps * 16000)), np.float32)
        sound[: min(len(sound), len(waveform))] = waveform[: len(sound)]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out_path, pixels, fps=max(1, round(fps)), audio=sound)
    return out_path


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m idvid animate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a kit checkpoint (.ckpt) from fit or convert")
    parser.add_argument("--image", required=True, help="reference photo with one face")
    parser.add_argument("--drive", default=None, help="driving video (its frames drive the face)")
    parser.add_argument("--audio", default=None, help="driving audio: any audio or video file with sound")
    parser.add_argument("--motion-scale", type=float, default=1.0, help="head motion of --drive x A (1: as it is)")
    parser.add_argument("--audio-scale", type=float, default=None, help="sets every injector's audio_scale option")
    parser.add_argument("--out", required=True, help="mp4 to write (with the audio)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--frames", type=int, default=None, help="default: the backbone's default video size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--fps", type=float, default=None, help="default: the driving video's, else 8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action="store_true", help="sample with the EMA of the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--audio-mel-frames",
        type=int,
        default=None,
        help="the audio window in mel frames (default: the one the checkpoint's audio conditioner takes, else 3000)",
    )
    parser.add_argument("--audio-mel-bins", type=int, default=80, help="the model's data.audio_mel_bins")
    parser.add_argument(
        "overrides", nargs="*", help="the face backend: face=dlib|insightface face.options.<name>=<value>"
    )
    check_old_face_flags(args)
    options = parser.parse_intermixed_args(args)
    path = animate(
        options.checkpoint,
        options.image,
        options.out,
        drive=options.drive,
        audio=options.audio,
        prompt=options.prompt,
        motion_scale=options.motion_scale,
        audio_scale=options.audio_scale,
        num_frames=options.frames,
        height=options.height,
        width=options.width,
        fps=options.fps,
        steps=options.steps,
        guidance=options.guidance,
        seed=options.seed,
        ema=options.ema,
        face=face_node(options.overrides),
        overwrite=options.overwrite,
        audio_mel_frames=options.audio_mel_frames,
        audio_mel_bins=options.audio_mel_bins,
    )
    print(f"wrote {path}")
