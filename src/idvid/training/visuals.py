"""Pictures for TensorBoard: a frame grid of generated videos next to their references."""

from __future__ import annotations

import torch


def frame_grid(video: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, F, 3, H, W]`` in [-1, 1] -> one ``[3, B*H, (F+1)*W]`` image in [0, 1].

    One row per sample; the first column is the reference photo when given (else black).
    """
    batch, frames, channels, height, width = video.shape
    if references is None:
        references = torch.full((batch, channels, height, width), -1.0)
    references = torch.nn.functional.interpolate(references.float(), size=(height, width), mode="bilinear")
    rows = torch.cat([references.unsqueeze(1), video.float()], dim=1)  # [B, F+1, 3, H, W]
    grid = rows.permute(2, 0, 3, 1, 4).reshape(channels, batch * height, (frames + 1) * width)
    return ((grid + 1) / 2).clamp(0, 1)
