"""``megactor.audio_attention``: each frame's video tokens cross-attend to that frame's audio window.

MegActor-Sigma adds an audio cross-attention between a block's attention and its FFN (site
``attn_ffn``). Its output is multiplied by ``audio_scale``, the inference-time amplitude knob
(0 gives exactly the model without audio; the residual is linear in it), and starts at zero (a
zero-initialised output projection), so a pretrained backbone is unchanged at step 0.

The audio windows come per *video* frame (``audio_tokens`` ``[B, F, W, D]``, ``megactor.whisper_audio``);
a token frame of a video VAE covers several video frames, so its tokens attend to the windows of all
the video frames it covers (``idvid_megactor.frames``) and to nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from idvid.errors import ConfigError
from idvid.injection import TokenInjector
from idvid.registry import register_injector
from idvid_megactor.frames import padded_frame_index, video_frames_per_frame


class FrameCrossAttention(nn.Module):
    """Multi-head attention of ``[G, N, width]`` queries to ``[G, M, context_width]`` keys/values, group by group."""

    def __init__(self, width: int, context_width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"hidden size {width} is not divisible by heads={heads}; choose a divisor of {width}.")
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_width, width, bias=False)
        self.to_v = nn.Linear(context_width, width, bias=False)
        self.to_out = nn.Linear(width, width)
        nn.init.zeros_(self.to_out.weight)  # a no-op until it learns
        nn.init.zeros_(self.to_out.bias)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        groups, length, width = queries.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(groups, x.shape[1], self.heads, width // self.heads).transpose(1, 2)

        query = split(self.to_q(self.norm(queries)))
        key, value = split(self.to_k(context)), split(self.to_v(context))
        attended = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        return self.to_out(attended.transpose(1, 2).reshape(groups, length, width))


@register_injector("megactor.audio_attention")
class AudioAttention(TokenInjector):
    """Video tokens of each frame attend to that frame's audio tokens; residual ``audio_scale`` x attention."""

    consumes = ("audio_tokens",)
    reads_token_grid = True

    def __init__(
        self, backbone, site="attn_ffn", blocks="all", audio_dim: int = 384, heads: int = 2, audio_scale: float = 1.0
    ):
        super().__init__(backbone, site=site, blocks=blocks)
        self.audio_dim = int(audio_dim)
        self.audio_scale = float(audio_scale)  # a plain attribute: `animate --audio-scale` sets it
        self.attention = nn.ModuleList(
            FrameCrossAttention(backbone.hidden_size, audio_dim, heads) for _ in self.block_indices
        )
        self.slot = {block: i for i, block in enumerate(self.block_indices)}

    def prepare(self, conditions, random):
        """``[B, token_frames, M * W, D]``: each token frame's audio, the windows of the video frames it covers."""
        audio = conditions["audio_tokens"]  # [B, F, W, D]
        if audio.shape[-1] != self.audio_dim:
            raise ConfigError(
                f"megactor.audio_attention was built for audio tokens of width {self.audio_dim}; the audio "
                f"conditioner gives {audio.shape[-1]}.",
                f"Set injectors.<label>.audio_dim={audio.shape[-1]} (the Whisper's d_model: 384 for whisper-tiny).",
            )
        index = padded_frame_index(video_frames_per_frame(audio.shape[1], self.backbone_info, tokens=True))
        per_frame = audio[:, index.to(audio.device)]  # [B, f, M, W, D]
        return per_frame.flatten(2, 3)

    def forward(self, block_index, hidden_states, audio, token_grid):
        batch, _, width = hidden_states.shape
        frames = token_grid[0]
        if audio.shape[1] != frames:
            raise ValueError(
                f"megactor.audio_attention has audio for {audio.shape[1]} token frames, the video has {frames}: "
                "the batch's audio_frame_times must list every video frame of the clip."
            )
        queries = hidden_states.reshape(batch * frames, -1, width)
        context = audio.reshape(batch * frames, audio.shape[2], audio.shape[3]).to(hidden_states.dtype)
        attended = self.attention[self.slot[block_index]](queries, context)
        return self.audio_scale * attended.reshape(batch, -1, width)
