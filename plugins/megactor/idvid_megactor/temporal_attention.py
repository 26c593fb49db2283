"""``megactor.temporal_attention``: self-attention across frames at each spatial position.

MegActor-Sigma adds temporal layers to an image DiT (PixArt-alpha) after the self-attention of odd
blocks, as AnimateDiff's motion modules do; on the kit's video DiTs they sit at ``attn_ffn`` of odd
blocks by default. Each token attends only to the tokens at the same (row, column) of the other
token frames, with a sinusoidal frame position added to its queries and keys; the output
projection starts at zero, so the backbone is unchanged at step 0. Stage 3 (``megactor_stage3_motion``)
trains only these modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from idvid.injection import TokenInjector
from idvid.registry import register_injector


def frame_positions(frames: int, width: int) -> torch.Tensor:
    """``[frames, width]`` sinusoidal encoding of the frame index (Transformer's)."""
    position = torch.arange(frames, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    encoding = torch.zeros(frames, width)
    encoding[:, 0::2] = torch.sin(position * rate)
    encoding[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return encoding


class TemporalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"hidden size {width} is not divisible by heads={heads}; choose a divisor of {width}.")
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.to_out = nn.Linear(width, width)
        nn.init.zeros_(self.to_out.weight)  # a no-op until it learns
        nn.init.zeros_(self.to_out.bias)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """``[G, frames, width]`` -> the attention output of each frame over the G sequences' frames."""
        groups, frames, width = sequences.shape
        normed = self.norm(sequences) + frame_positions(frames, width).to(sequences)
        query, key, value = (
            x.view(groups, frames, self.heads, width // self.heads).transpose(1, 2)
            for x in self.to_qkv(normed).chunk(3, dim=-1)
        )
        attended = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        return self.to_out(attended.transpose(1, 2).reshape(groups, frames, width))


@register_injector("megactor.temporal_attention")
class TemporalAttention(TokenInjector):
    """Attention across token frames at each spatial position; odd blocks at ``attn_ffn`` by default."""

    consumes = ()
    reads_token_grid = True

    def __init__(self, backbone, site="attn_ffn", blocks="odd", heads: int = 2):
        super().__init__(backbone, site=site, blocks=blocks)
        self.attention = nn.ModuleList(TemporalSelfAttention(backbone.hidden_size, heads) for _ in self.block_indices)
        self.slot = {block: i for i, block in enumerate(self.block_indices)}

    def forward(self, block_index, hidden_states, prepared, token_grid):
        batch, _, width = hidden_states.shape
        frames, height, columns = token_grid
        # [B, f*h*w, D] (frame-major) -> one sequence of f tokens per (sample, position)
        sequences = hidden_states.view(batch, frames, height * columns, width).transpose(1, 2)
        attended = self.attention[self.slot[block_index]](sequences.reshape(-1, frames, width))
        attended = attended.view(batch, height * columns, frames, width).transpose(1, 2)
        return attended.reshape(batch, -1, width)
