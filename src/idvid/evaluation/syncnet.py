"""SyncNet (Chung & Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops) and the
Sync-C / Sync-D scores computed with it (the lip-sync filter of preprocess and ``evaluate``'s metrics).

Two streams map 0.2 s of input to one embedding each: the audio stream reads 13 MFCCs x 20 steps (100 Hz)
as a one-channel image, the lip stream 5 video frames (25 fps) of the face crop through a 3-D convolution.
In sync, the two embeddings are close. Scoring a video: each 5-frame window's lip embedding is compared
(Euclidean distance) with the audio embeddings at offsets -max_offset .. +max_offset frames; the mean
distance per offset over the video is a curve whose minimum is Sync-D (lower is better) and whose median
minus minimum is Sync-C, the confidence (higher is better); the offset at the minimum is the audio's lag.

The module layout (``netcnnaud``, ``netfcaud``, ``netcnnlip``, ``netfclip``) is the one of the public
``syncnet_v2.model`` state dict, so that file loads as it is; channel widths are read from the file, so a
smaller model of the same layout (the tests' tiny one) loads through the same code. Inputs follow the
public evaluation: 224 x 224 BGR face crops in 0..255, 16 kHz audio, MFCCs as in python_speech_features'
defaults (implemented here in numpy). Numbers match published ones only with their face crops and 25 fps
material; the face crop here is the tracked face box's square widened by ``CROP_MARGIN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.fft
import torch
from torch import nn

from idvid.data.audio import SAMPLE_RATE

SYNCNET_WEIGHTS_FILE = "syncnet_v2.model"
SYNCNET_FPS = 25  # video frames a second SyncNet was trained on: 4 MFCC steps a frame
CROP_SIZE = 224
CROP_MARGIN = 1.4  # the crop's side over the face box's longer side
WINDOW_FRAMES = 5  # video frames per embedding (0.2 s)
MFCC_PER_FRAME = 4  # 100 Hz MFCC steps per 25 fps frame
NUM_CEPSTRA = 13


# ----------------------------------------------------------------------------------------------- the model
def _conv2d_block(cin: int, cout: int, kernel, padding, pool=None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]
    return layers + ([pool] if pool is not None else [])


def _conv3d_block(cin: int, cout: int, kernel, stride=1, padding=0, pool=None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU()]
    return layers + ([pool] if pool is not None else [])


def _embedding_head(width: int, embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, embed_dim))


class SyncNet(nn.Module):
    """Audio and lip streams; `audio_widths` / `lip_widths`: the 6 / 6 conv widths (public model:
    64, 192, 384, 256, 256, 512 and 96, 256, 256, 256, 256, 512), `embed_dim` the embedding (1024)."""

    def __init__(self, audio_widths: tuple[int, ...], lip_widths: tuple[int, ...], embed_dim: int):
        super().__init__()
        a1, a2, a3, a4, a5, a6 = audio_widths
        self.netcnnaud = nn.Sequential(  # [N, 1, 13, 20] -> [N, a6, 1, 1]
            *_conv2d_block(1, a1, 3, 1, nn.MaxPool2d(1, 1)),
            *_conv2d_block(a1, a2, 3, 1, nn.MaxPool2d(3, (1, 2))),
            *_conv2d_block(a2, a3, 3, 1),
            *_conv2d_block(a3, a4, 3, 1),
            *_conv2d_block(a4, a5, 3, 1, nn.MaxPool2d(3, 2)),
            *_conv2d_block(a5, a6, (5, 4), 0),
        )
        v1, v2, v3, v4, v5, v6 = lip_widths
        self.netcnnlip = nn.Sequential(  # [N, 3, 5, 224, 224] -> [N, v6, 1, 1, 1]
            *_conv3d_block(3, v1, (5, 7, 7), (1, 2, 2), 0, nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv3d_block(v1, v2, (1, 5, 5), (1, 2, 2), (0, 1, 1), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))),
            *_conv3d_block(v2, v3, (1, 3, 3), 1, (0, 1, 1)),
            *_conv3d_block(v3, v4, (1, 3, 3), 1, (0, 1, 1)),
            *_conv3d_block(v4, v5, (1, 3, 3), 1, (0, 1, 1), nn.MaxPool3d((1, 3, 3), (1, 2, 2))),
            *_conv3d_block(v5, v6, (1, 6, 6), 1, 0),
        )
        self.netfcaud = _embedding_head(a6, embed_dim)
        self.netfclip = _embedding_head(v6, embed_dim)

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] MFCC windows -> [N, embed_dim]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def embed_lips(self, clips: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR 0..255 face-crop windows -> [N, embed_dim]."""
        return self.netfclip(self.netcnnlip(clips).flatten(1))


def _conv_widths(state: dict[str, torch.Tensor], prefix: str, indices: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(state[f"{prefix}.{i}.weight"].shape[0]) for i in indices)


AUDIO_CONV_INDICES = (0, 4, 8, 11, 14, 18)  # where the convolutions sit in netcnnaud
LIP_CONV_INDICES = (0, 4, 8, 11, 14, 18)


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """SyncNet from a state dict file in the public layout; widths are read from it.

    Raises FileNotFoundError naming the file and where it goes when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SyncNet weights not found: {path}; put the public {SYNCNET_WEIGHTS_FILE} (syncnet_python's "
            f"SyncNet v2 state dict) there or pass its path (preprocess: syncnet_weights=/path/to/"
            f"{SYNCNET_WEIGHTS_FILE}; evaluate: models.syncnet=/path/to/{SYNCNET_WEIGHTS_FILE})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model = SyncNet(
            _conv_widths(state, "netcnnaud", AUDIO_CONV_INDICES),
            _conv_widths(state, "netcnnlip", LIP_CONV_INDICES),
            int(state["netfcaud.3.weight"].shape[0]),
        )
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as err:
        raise ValueError(
            f"{path} is not a SyncNet state dict in the public layout (netcnnaud/netfcaud/netcnnlip/netfclip): "
            f"{err}; use syncnet_python's {SYNCNET_WEIGHTS_FILE}"
        ) from err
    return model.eval().to(device)


# -------------------------------------------------------------------------------------------- the inputs
def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mfcc(waveform: np.ndarray, num_filters: int = 26, fft_size: int = 512) -> np.ndarray:
    """[T, 13] MFCCs at 100 Hz of a 16 kHz waveform, with python_speech_features' defaults.

    25 ms rectangular windows every 10 ms after a 0.97 pre-emphasis, power spectrum, 26 triangular mel
    filters, log, DCT-II (orthonormal), sine liftering of 22, and the first coefficient replaced by the
    log frame energy.
    """
    signal = np.asarray(waveform, dtype=np.float64)
    signal = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    window, step = int(0.025 * SAMPLE_RATE), int(0.01 * SAMPLE_RATE)
    count = 1 if len(signal) <= window else 1 + int(np.ceil((len(signal) - window) / step))
    padded = np.zeros((count - 1) * step + window)
    padded[: len(signal)] = signal
    frames = padded[np.arange(window)[None, :] + step * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames, fft_size)) ** 2 / fft_size
    energy = np.maximum(power.sum(axis=1), np.finfo(float).eps)
    mel_points = np.linspace(0, _hz_to_mel(SAMPLE_RATE / 2), num_filters + 2)
    edges = np.floor((fft_size + 1) * _mel_to_hz(mel_points) / SAMPLE_RATE)
    bank = np.zeros((num_filters, fft_size // 2 + 1))
    for j in range(num_filters):
        lo, mid, hi = int(edges[j]), int(edges[j + 1]), int(edges[j + 2])
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    features = np.log(np.maximum(power @ bank.T, np.finfo(float).eps))
    cepstra = scipy.fft.dct(features, type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
    cepstra *= 1 + 11.0 * np.sin(np.pi * np.arange(NUM_CEPSTRA) / 22.0)
    cepstra[:, 0] = np.log(energy)
    return cepstra.astype(np.float32)


def face_crops(frames: np.ndarray, boxes: np.ndarray, fps: float) -> np.ndarray:
    """[N, 224, 224, 3] BGR uint8 face crops at 25 fps (the nearest frame at each 1/25 s) from RGB frames.

    boxes [T, 4]: the tracked face per frame (NaN rows take the nearest frame's box). Each crop is the
    box's centred square of side CROP_MARGIN x its longer side, edges replicated where it leaves the frame.
    """
    finite = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    if len(finite) == 0:
        raise ValueError("no frame has a face box to crop the lips from")
    count = int(np.floor(len(frames) / fps * SYNCNET_FPS))
    crops = []
    for k in range(count):
        t = min(int(round(k * fps / SYNCNET_FPS)), len(frames) - 1)
        x0, y0, x1, y1 = boxes[finite[np.argmin(np.abs(finite - t))]]
        half = CROP_MARGIN * max(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        scale = CROP_SIZE / (2 * half)
        matrix = np.array([[scale, 0, CROP_SIZE / 2 - scale * cx], [0, scale, CROP_SIZE / 2 - scale * cy]])
        crop = cv2.warpAffine(frames[t], matrix, (CROP_SIZE, CROP_SIZE), borderMode=cv2.BORDER_REPLICATE)
        crops.append(crop[..., ::-1])
    return np.ascontiguousarray(np.stack(crops)) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)


# ------------------------------------------------------------------------------------------- the scores
@dataclass(frozen=True)
class SyncScore:
    confidence: float  # Sync-C: median minus minimum of the mean distance over offsets (higher: in sync)
    distance: float  # Sync-D: the minimum mean distance (lower: in sync)
    offset: int  # the audio's lag in 25 fps frames at the minimum


@torch.no_grad()
def sync_score(
    model: SyncNet, frames: np.ndarray, boxes: np.ndarray, waveform: np.ndarray, fps: float, max_offset: int = 15
) -> SyncScore | None:
    """Sync-C, Sync-D and the offset of RGB `frames` (with their face `boxes`) against a 16 kHz `waveform`.

    None when the video is shorter than one 5-frame window (0.2 s) at 25 fps.
    """
    crops = face_crops(frames, boxes, fps)
    coefficients = mfcc(waveform)
    windows = min(len(crops), len(coefficients) // MFCC_PER_FRAME) - WINDOW_FRAMES + 1
    if windows < 1:
        return None
    device = next(model.parameters()).device
    video = torch.from_numpy(crops).float().permute(3, 0, 1, 2)  # [3, N, 224, 224]
    cc = torch.from_numpy(coefficients.T.copy())  # [13, T]
    steps = WINDOW_FRAMES * MFCC_PER_FRAME
    lips, audio = [], []
    for start in range(0, windows, 16):  # batches of windows keep the 3-D convolutions' memory small
        chunk = range(start, min(start + 16, windows))
        lips.append(model.embed_lips(torch.stack([video[:, i : i + WINDOW_FRAMES] for i in chunk]).to(device)))
        mfcc_windows = torch.stack([cc[:, i * MFCC_PER_FRAME : i * MFCC_PER_FRAME + steps] for i in chunk])
        audio.append(model.embed_audio(mfcc_windows[:, None].to(device)))
    lips, audio = torch.cat(lips), torch.cat(audio)
    padded = torch.nn.functional.pad(audio, (0, 0, max_offset, max_offset))
    # distances[i, k]: window i's lips against the audio at offset k - max_offset (zero embeddings past the ends)
    distances = torch.stack(
        [torch.linalg.vector_norm(lips[i] - padded[i : i + 2 * max_offset + 1], dim=1) for i in range(windows)]
    )
    curve = distances.mean(dim=0)
    best = int(torch.argmin(curve))
    minimum = float(curve[best])
    return SyncScore(confidence=float(curve.median()) - minimum, distance=minimum, offset=max_offset - best)
