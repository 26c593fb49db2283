"""CurricularFace's IR-101 backbone in torch, loadable from the released Glint360K weights.

The module names follow the released ``glint360k_curricular_face_r101_backbone.bin`` (the
TFace "IR_101" layout): ``input_layer`` (conv, BN, PReLU), ``body`` (a flat list of
improved-residual bottlenecks with ``shortcut_layer`` and ``res_layer``) and ``output_layer``
(BN, dropout, flatten, linear, BN without affine). Depth and width are constructor arguments,
so tests build the same architecture tiny and load it through the same code.

Input: the ArcFace-aligned face at 112x112, RGB, scaled to [-1, 1]. Output: a 512-d embedding
(L2-normalise it before comparing). The official script warps to the template at 224 and resizes to
112; ``idvid.evaluation.identity.arcface_crop`` warps to the same template at 112 directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

WEIGHTS_FILE = "glint360k_curricular_face_r101_backbone.bin"
IR101_UNITS = (3, 13, 30, 3)
IR101_WIDTHS = (64, 128, 256, 512)


class BottleneckIR(nn.Module):
    """Improved residual unit: BN-conv-BN-PReLU-conv(stride)-BN plus a (projected) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """IR-ResNet face backbone; the defaults are IR-101 at 112x112 with a 512-d output."""

    def __init__(
        self,
        units: Sequence[int] = IR101_UNITS,
        widths: Sequence[int] = IR101_WIDTHS,
        embedding_dim: int = 512,
        input_size: int = 112,
        stem_width: int = 64,
    ):
        super().__init__()
        if len(units) != len(widths):
            raise ValueError(f"units {list(units)} and widths {list(widths)} must have the same length (one per stage)")
        if input_size % 2 ** len(units):
            raise ValueError(f"input_size={input_size} must be divisible by 2**{len(units)} (one halving per stage)")
        self.input_size = input_size
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.PReLU(stem_width)
        )
        blocks: list[nn.Module] = []
        in_channels = stem_width
        for count, depth in zip(units, widths):
            blocks.append(BottleneckIR(in_channels, depth, 2))
            blocks.extend(BottleneckIR(depth, depth, 1) for _ in range(count - 1))
            in_channels = depth
        self.body = nn.Sequential(*blocks)
        side = input_size // 2 ** len(units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(in_channels * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected faces of {self.input_size}x{self.input_size}, got {tuple(x.shape[-2:])}")
        return self.output_layer(self.body(self.input_layer(x)))


def load_curricularface(path: str | Path, device: str = "cpu", **architecture) -> IRBackbone:
    """The backbone with the weights at ``path`` (a state-dict file), in eval mode.

    ``architecture`` goes to ``IRBackbone`` (default: IR-101, the released model). A missing file
    is a FileNotFoundError naming it; mismatching keys are a load error naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CurricularFace weights not found: {path}; put the released {WEIGHTS_FILE} there "
            f"(ConsisID-preview ships it in face_encoder/) or set models.curricularface=/path/to/{WEIGHTS_FILE}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # Saved from nn.DataParallel: keys carry a "module." prefix.
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = IRBackbone(**architecture)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)
