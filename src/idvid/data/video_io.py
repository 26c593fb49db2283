"""Minimal video read/write with PyAV (RGB uint8 frames)."""

from __future__ import annotations

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


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> str:
    """Write [T, H, W, 3] RGB uint8 frames as near-lossless yuv420p mp4; returns the codec used.

    libx264 (crf 10, one thread so the bytes are reproducible) when available, else mpeg4
    at a high bit rate.
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
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "medium", "threads": "1"}
        else:
            stream.bit_rate = 8_000_000  # mpeg4 has no crf; a high bit rate keeps it near-lossless
            stream.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video to [T, H, W, 3] RGB uint8."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no video frames could be decoded from {path}")
    return np.stack(frames)


def probe_video(path: str | Path) -> VideoInfo:
    """Open `path` and describe its first video stream without decoding it.

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
    """Decode the first video stream frame by frame as [H, W, 3] RGB uint8 (constant memory).

    A decoding error part-way raises VideoReadError("corrupt_video") naming the frame reached;
    a video that yields no frame at all raises it too.
    """
    probe_video(path)
    count = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
                count += 1
    except av.FFmpegError as err:
        raise VideoReadError(path, "corrupt_video", f"decoding failed after {count} frames ({err})") from err
    if count == 0:
        raise VideoReadError(path, "corrupt_video", "no video frame could be decoded")
