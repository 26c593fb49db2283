"""A clip's audio in its annotations: the 16 kHz waveform cut to the clip's frames and Whisper's log-mel of it.

The audio stream is assumed to start with the video stream (as cameras and editors write them); frame t
of the kept clip lies at t / fps seconds of the clip, its audio at the same time of the cut waveform.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from idvid.data.audio import clip_waveform, has_audio_stream, load_audio, log_mel
from idvid.errors import UserError

log = logging.getLogger(__name__)


def source_clip_audio(source: Path, first_frame: int, num_frames: int, fps: float) -> np.ndarray | None:
    """The 16 kHz mono samples under source frames first_frame .. + num_frames - 1; None without audio.

    A file without an audio stream, or whose audio cannot be decoded (logged), has no audio: the clip is
    kept for visual-only training and audio-driven filters skip it.
    """
    if not has_audio_stream(source):
        return None
    try:
        waveform = load_audio(source)
    except UserError as err:
        log.warning("%s: audio not used: %s", source, err)
        return None
    return clip_waveform(waveform, first_frame, num_frames, fps)


def audio_arrays(waveform: np.ndarray | None, num_frames: int, fps: float, num_mel_bins: int) -> dict[str, np.ndarray]:
    """The annotations' audio arrays (see idvid.data.manifest): has_audio, audio_mel, frame_times."""
    mel = log_mel(waveform, num_mel_bins) if waveform is not None else np.zeros((num_mel_bins, 0), np.float32)
    return {
        "has_audio": np.array(waveform is not None),
        "audio_mel": mel,
        "frame_times": (np.arange(num_frames) / fps).astype(np.float32),
    }
