"""idvid.data.audio: decoding and resampling with PyAV, Whisper's log-mel, the per-item mel window."""

from __future__ import annotations

import av
import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from idvid.data.audio import MEL_FRAMES_PER_SECOND, SAMPLE_RATE, clip_waveform, load_audio, log_mel, mel_window
from idvid.data.video_io import write_mp4
from idvid.errors import UserError


def write_wav(path, waveform: np.ndarray, rate: int) -> None:
    """[channels, samples] float in [-1, 1] as 16-bit PCM wav."""
    pcm = np.ascontiguousarray((waveform * 32767).astype(np.int16).reshape(1, -1, order="F"))  # interleaved
    layout = "stereo" if len(waveform) == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)


def test_load_audio_downmixes_and_resamples_to_16khz(tmp_path):
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([tone(440, 1.5, 44100), tone(440, 1.5, 44100)]), 44100)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and abs(len(waveform) - int(1.5 * SAMPLE_RATE)) <= 32
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(waveform) - 440) < 2  # the tone survived resampling
    assert 0.45 < np.abs(waveform).max() < 0.55


def test_audio_muxed_into_an_mp4_comes_back_aligned_with_the_frames(tmp_path):
    # Silence for the first half second, then a tone: the onset stays at 0.5 s through AAC (priming trimmed).
    waveform = (tone(300, 2.0, SAMPLE_RATE) * (np.arange(2 * SAMPLE_RATE) >= SAMPLE_RATE // 2)).astype(np.float32)
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, fps=8, audio=waveform)
    decoded = load_audio(path)
    onset = np.flatnonzero(np.abs(decoded) > 0.1)[0]
    assert abs(onset - SAMPLE_RATE // 2) < 40
    assert np.corrcoef(decoded[: len(waveform)], waveform)[0, 1] > 0.99


def test_a_file_without_audio_is_refused_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "silent.mp4"
    write_mp4(path, np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"silent\.mp4: no audio stream.*\n.*has sound"):
        load_audio(path)
    with pytest.raises(UserError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")


def test_log_mel_is_whispers_input_features_without_the_30_second_padding():
    waveform = (np.random.default_rng(0).normal(size=SAMPLE_RATE * 2 + 77) * 0.1).astype(np.float32)
    mel = log_mel(waveform)
    assert mel.shape == (80, len(waveform) // 160) and mel.dtype == np.float32
    whisper = WhisperFeatureExtractor(feature_size=80)(waveform, sampling_rate=SAMPLE_RATE, return_tensors="np")
    np.testing.assert_allclose(mel, whisper.input_features[0][:, : mel.shape[1]], atol=1e-5)
    assert log_mel(waveform, num_mel_bins=128).shape == (128, mel.shape[1])


def test_a_sound_at_time_t_lands_on_mel_frame_t_times_100():
    waveform = tone(1000, 2.0, SAMPLE_RATE) * (np.arange(2 * SAMPLE_RATE) >= int(1.2 * SAMPLE_RATE))
    loudness = log_mel(waveform.astype(np.float32)).mean(axis=0)
    onset = int(np.flatnonzero(loudness > (loudness[:50].mean() + loudness[150:190].mean()) / 2)[0])
    assert abs(onset - 1.2 * MEL_FRAMES_PER_SECOND) <= 2


def test_mel_window_cuts_from_the_first_frame_and_pads_with_zeros():
    mel = np.arange(3 * 250, dtype=np.float32).reshape(3, 250)
    frame_times = np.array([1.0, 1.25, 1.5])
    window, times = mel_window(mel, frame_times, 200)
    assert window.shape == (3, 200)
    np.testing.assert_array_equal(window[:, :150], mel[:, 100:])
    assert (window[:, 150:] == 0).all()
    np.testing.assert_allclose(times, [0.0, 0.25, 0.5])
    short, _ = mel_window(mel, frame_times, 20)
    np.testing.assert_array_equal(short, mel[:, 100:120])


def test_clip_waveform_takes_the_samples_under_the_frames():
    waveform = np.arange(SAMPLE_RATE, dtype=np.float32)
    piece = clip_waveform(waveform, first_frame=2, num_frames=4, fps=8)  # 0.25 s .. 0.75 s
    np.testing.assert_array_equal(piece, waveform[4000:12000])
    padded = clip_waveform(waveform, first_frame=6, num_frames=4, fps=8)  # runs past the end
    assert len(padded) == 8000 and (padded[4000:] == 0).all()
