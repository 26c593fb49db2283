"""Minimal video read/write with PyAV (RGB uint8 frames).

Every decode in the kit goes through `iter_frames` (or `read_mp4`, built on it), which turns each
frame the way players show it: phone videos are often stored sideways with a display matrix that
says how to turn them (PyAV: `frame.rotation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np


class VideoReadError(ValueError):
    """A file that cannot be read as a video; `reason` is "not_a_video" or "corrupt_video"."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {reason.replace('_', ' ')}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (num_frames may be 0 when unknown)."""

    width: int
    height: int
    fps: float
    num_frames: int


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 8,
    display_rotation: int = 0,
    display_mirror: bool = False,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
) -> str:
    """Write [T, H, W, 3] RGB uint8 frames as near-lossless yuv420p mp4; returns the codec used.

    audio: a mono float32 waveform at `audio_rate` muxed as an AAC track (FFmpeg's native encoder,
    deterministic), starting with the first frame; None writes a silent file (no audio stream).

    libx264 (crf 10, one thread so the bytes are reproducible) when available, else mpeg4
    at a high bit rate. display_rotation: a counter-clockwise angle stored in the display matrix
    (what phones write), which players and `iter_frames` apply; display_mirror mirrors left-right
    after it; neither set writes no matrix.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}; crop or resize by one pixel")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if display_rotation or display_mirror:
            stream.set_display_rotation(display_rotation, hflip=display_mirror)
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "medium", "threads": "1"}
        else:
            stream.bit_rate = 8_000_000  # mpeg4 has no crf; a high bit rate keeps it near-lossless
            stream.thread_count = 1
        # Every stream is added before the first packet: the header is written then.
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=int(audio_rate))
            audio_stream.layout = "mono"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            _mux_audio(container, audio_stream, np.asarray(audio, dtype=np.float32).reshape(-1))
    return codec


AAC_FRAME_SAMPLES = 1024  # what the AAC encoder takes per frame


def _mux_audio(container: av.container.OutputContainer, stream: av.audio.AudioStream, waveform: np.ndarray) -> None:
    for start in range(0, len(waveform), AAC_FRAME_SAMPLES):
        samples = waveform[None, start : start + AAC_FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video to [T, H, W, 3] RGB uint8, upright (see `iter_frames`)."""
    return np.stack(list(iter_frames(path)))


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """The frame as [H, W, 3] RGB uint8, turned and mirrored by its display matrix (as players show it)."""
    image = frame.to_ndarray(format="rgb24")
    quarter_turns, mirrored = display_orientation(frame)
    if quarter_turns:
        image = np.rot90(image, quarter_turns)  # counter-clockwise, as the display matrix's angle
    if mirrored:
        image = image[:, ::-1]
    return np.ascontiguousarray(image) if quarter_turns or mirrored else image


def display_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(counter-clockwise quarter turns, then a left-right mirror) that the frame's display matrix asks for.

    FFmpeg's matrix is the rotation with its first column negated for a mirror (av_display_matrix_flip;
    an up-down mirror is a left-right one plus half a turn). `frame.rotation` alone reads a mirrored
    matrix as a half turn, so the matrix itself is read here. Angles are rounded to quarter turns.
    """
    side_data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if side_data is None:
        return 0, False
    a, b, _, c, d = np.frombuffer(bytes(side_data), dtype=np.int32)[:5].astype(np.float64)
    mirrored = a * d - b * c < 0
    if mirrored:
        a, c = -a, -c
    degrees = -math.degrees(math.atan2(b, a))  # av_display_rotation_get, as frame.rotation
    return round(degrees / 90) % 4, bool(mirrored)


def probe_video(path: str | Path) -> VideoInfo:
    """Open `path` and describe its first video stream without decoding it.

    width and height are the stored size: a video with a display rotation of a quarter turn decodes
    to frames of height x width (`iter_frames` applies it).

    Raises VideoReadError("not_a_video") when the container cannot be opened or has no video
    stream (a truncated mp4 loses its index and lands here too), and lets PermissionError and
    FileNotFoundError through so callers can tell an unreadable file from a bad one.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "not_a_video", "the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            return VideoInfo(int(stream.width), int(stream.height), fps, int(stream.frames or 0))
    except av.error.PermissionError as err:
        raise PermissionError(str(err)) from err
    except av.error.FileNotFoundError as err:
        raise FileNotFoundError(str(err)) from err
    except av.FFmpegError as err:
        raise VideoReadError(path, "not_a_video", f"the decoder cannot open it ({err})") from err


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the first video stream frame by frame as [H, W, 3] RGB uint8, upright (constant memory).

    Each frame is turned (and mirrored) by the stream's display matrix (`upright_rgb`), so
    detections, crops and training clips see the video as players show it.

    A decoding error part-way raises VideoReadError("corrupt_video") naming the frame reached;
    a video that yields no frame at all raises it too.
    """
    probe_video(path)
    count = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield upright_rgb(frame)
                count += 1
    except av.FFmpegError as err:
        raise VideoReadError(path, "corrupt_video", f"decoding failed after {count} frames ({err})") from err
    if count == 0:
        raise VideoReadError(path, "corrupt_video", "no video frame could be decoded")
