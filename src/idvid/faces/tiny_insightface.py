"""Tiny offline stand-ins for antelopev2's two ONNX models, for tests and demos without the real weights.

They are NOT face models. They have the real models' interfaces, so insightface's own loader
routes them to its SCRFD and ArcFaceONNX classes, and a behaviour simple enough to check exactly:

- the detector (``scrfd_10g_bnkps.onnx`` stand-in) fires at stride 32 on a fully red 32x32 cell and
  at stride 16 on a fully green 16x16 cell (cells of the letterboxed detector input). Each firing
  anchor predicts a square box centred on its cell, twice the cell's size, with the 5 keypoints at
  ArcFace template positions inside that box. Nothing else fires.
- the recognizer (``glintr100.onnx`` stand-in) maps a 112x112 crop to a fixed function of its pixels
  (seeded conv + global pooling + linear), ``TINY_EMBEDDING_DIM`` wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idvid.faces.align import ARCFACE_TEMPLATE_112
from idvid.faces.insightface_analyzer import DETECTOR_FILE, RECOGNIZER_FILE

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
# Detector input channel that each stride fires on (blob channels are RGB: insightface swaps BGR->RGB).
FIRING_CHANNEL = {32: 0, 16: 1}  # stride 32: red, stride 16: green
# Logit = gain * (channel - mean of the other two) + bias, on the cell's mean of insightface's
# normalised input ((x - 127.5) / 128). A pure-colour cell gives ~1.99, black 0.
FIRING_GAIN = {32: 3.0, 16: 4.0}
FIRING_BIAS = -3.0
# (left, top, right, bottom) distances from the anchor point (its cell's top-left corner), in strides.
BOX_DISTANCES = (0.5, 0.5, 1.5, 1.5)
TINY_EMBEDDING_DIM = 64
RECOGNIZER_SEED = 0


def keypoint_offsets() -> np.ndarray:
    """[5, 2] keypoints relative to the anchor point, in strides: ArcFace's template inside the box."""
    left, top, right, bottom = BOX_DISTANCES
    size = left + right
    return (ARCFACE_TEMPLATE_112 / 112.0 * size - np.array([left, top], dtype=np.float32)).astype(np.float32)


class _TinySCRFD(nn.Module):
    """Per-stride average pooling + 1x1 convs laid out as SCRFD's 9 outputs (score, bbox, kps x 3 strides)."""

    def __init__(self):
        super().__init__()
        self.pools = nn.ModuleList(nn.AvgPool2d(s, s) for s in STRIDES)
        self.scores = nn.ModuleList(nn.Conv2d(3, NUM_ANCHORS, 1) for _ in STRIDES)
        self.boxes = nn.ModuleList(nn.Conv2d(3, NUM_ANCHORS * 4, 1) for _ in STRIDES)
        self.kps = nn.ModuleList(nn.Conv2d(3, NUM_ANCHORS * 10, 1) for _ in STRIDES)
        kps = keypoint_offsets().reshape(-1)
        with torch.no_grad():
            for i, stride in enumerate(STRIDES):
                for conv in (self.scores[i], self.boxes[i], self.kps[i]):
                    conv.weight.zero_()
                self.scores[i].bias.fill_(FIRING_BIAS)
                if stride in FIRING_CHANNEL:
                    # Only anchor 0 looks at the colour; anchor 1 stays at the (low) bias.
                    channel, gain = FIRING_CHANNEL[stride], FIRING_GAIN[stride]
                    self.scores[i].weight[0, :, 0, 0] = -gain / 2
                    self.scores[i].weight[0, channel, 0, 0] = gain
                self.boxes[i].bias.copy_(torch.tensor(BOX_DISTANCES * NUM_ANCHORS))
                self.kps[i].bias.copy_(torch.from_numpy(np.tile(kps, NUM_ANCHORS)))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, boxes, kps = [], [], []
        for i in range(len(STRIDES)):
            pooled = self.pools[i](image)
            # SCRFD's layout: [H*W*anchors, C], row-major over the feature map, anchors innermost.
            scores.append(torch.sigmoid(self.scores[i](pooled)).permute(0, 2, 3, 1).reshape(-1, 1))
            boxes.append(self.boxes[i](pooled).permute(0, 2, 3, 1).reshape(-1, 4))
            kps.append(self.kps[i](pooled).permute(0, 2, 3, 1).reshape(-1, 10))
        return (*scores, *boxes, *kps)


class _TinyArcFace(nn.Module):
    """112x112 crop -> TINY_EMBEDDING_DIM features (not normalised, like ArcFace)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.fc = nn.Linear(16 * 4, TINY_EMBEDDING_DIM)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.pool(self.conv(image))).flatten(1))


def write_tiny_antelopev2(folder: str | Path) -> Path:
    """Write the two stand-in ONNX files into ``folder`` (created if needed) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    detector = _TinySCRFD().eval()
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(
        detector,
        (torch.zeros(1, 3, 128, 128),),
        str(folder / DETECTOR_FILE),
        input_names=["input.1"],
        output_names=names,
        dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: "anchors"} for n in names}},
        dynamo=False,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(RECOGNIZER_SEED)
        recognizer = _TinyArcFace().eval()
    torch.onnx.export(
        recognizer,
        (torch.zeros(1, 3, 112, 112),),
        str(folder / RECOGNIZER_FILE),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
        dynamo=False,
    )
    return folder
