"""Minimal mp4 read/write with PyAV (RGB uint8 frames)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


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
