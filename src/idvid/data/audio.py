"""Audio for audio-driven methods: decode any file's audio track, Whisper's log-mel input, windows per clip.

Decoding and resampling go through PyAV (FFmpeg's resampler), no torchaudio. The log-mel spectrogram is
``transformers.WhisperFeatureExtractor``'s (plain numpy, no weights), computed over the whole waveform
without Whisper's 30 s padding: ``MEL_FRAMES_PER_SECOND`` mel frames a second, so a video frame at time
``t`` seconds sits at mel frame ``round(t * MEL_FRAMES_PER_SECOND)``. A training or sampling item carries
the window of mel frames that starts at its first frame (``mel_window``) with its frames' times in it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from idvid.errors import UserError

SAMPLE_RATE = 16000  # Whisper's
HOP_LENGTH = 160  # WhisperFeatureExtractor's hop at 16 kHz
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


def has_audio_stream(path: str | Path) -> bool:
    """Whether the file opens and holds at least one audio stream."""
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except av.FFmpegError:
        return False


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of `path` as a mono float32 waveform at `sample_rate` (FFmpeg's resampler;
    the mean of the channels).

    Raises UserError naming the file when it has no audio stream (or cannot be opened).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}", "pass the path of a video or audio file with sound")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UserError(
                    f"{path}: no audio stream in the file",
                    "pass a video or audio file that has sound (e.g. an mp4 with an audio track, a wav or an mp3)",
                )
            # Resampled per channel, then averaged: FFmpeg's own downmix would scale (-3 dB per channel).
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=int(sample_rate))
            chunks = []
            for frame in container.decode(stream):
                chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().mean(axis=0) for out in resampler.resample(None)]  # flush
    except av.FFmpegError as err:
        raise UserError(f"{path}: the audio cannot be decoded ({err})", "pass a readable audio or video file") from err
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


@lru_cache(maxsize=4)
def _feature_extractor(num_mel_bins: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH)


def log_mel(waveform: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """Whisper's log-mel input features of a 16 kHz waveform: [num_mel_bins, len // 160] float32.

    No padding to Whisper's 30 s: the spectrogram covers the waveform only (windows pad with zeros later).
    """
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if len(waveform) < HOP_LENGTH:
        return np.zeros((num_mel_bins, 0), np.float32)
    extractor = _feature_extractor(int(num_mel_bins))
    features = extractor(
        waveform, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False, return_tensors="np"
    ).input_features[0]
    return features[:, : len(waveform) // HOP_LENGTH].astype(np.float32)


def mel_window(mel: np.ndarray, frame_times: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The `length` mel frames from frame_times[0] on (zero-padded past the end) and the frames' times in it.

    mel: [bins, T] of the whole clip (time 0 = its first mel frame); frame_times: seconds of the sampled
    video frames from the clip's start. Returns ([bins, length] float32, frame_times - frame_times[0]).
    """
    frame_times = np.asarray(frame_times, dtype=np.float32)
    start = max(0, int(round(float(frame_times[0]) * MEL_FRAMES_PER_SECOND)))
    window = np.zeros((mel.shape[0], int(length)), np.float32)
    piece = mel[:, start : start + int(length)]
    window[:, : piece.shape[1]] = piece
    return window, frame_times - frame_times[0]


def clip_waveform(waveform: np.ndarray, first_frame: int, num_frames: int, fps: float) -> np.ndarray:
    """The samples of video frames first_frame .. first_frame + num_frames - 1 at `fps` (zero-padded at the end)."""
    start = int(round(first_frame / fps * SAMPLE_RATE))
    length = int(round(num_frames / fps * SAMPLE_RATE))
    piece = np.zeros(length, np.float32)
    taken = waveform[start : start + length]
    piece[: len(taken)] = taken
    return piece
