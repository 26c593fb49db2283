"""Lynx's two adapters as idvid injectors: the ID-adapter and the Ref-adapter.

Both are cross-attentions of the video tokens, one per selected block, whose residual enters at a
site (``attn_ffn`` by default: after the block's attention, before its FFN):

* ``lynx.id_adapter`` reads ``face_embedding`` (the face backend's identity embedding; Lynx uses
  ArcFace, 512), turns it into ``num_tokens`` identity tokens with a Perceiver resampler, and lets the
  video tokens attend to them (plus ``registers`` learned tokens per block, as Lynx's layers may have).
* ``lynx.ref_adapter`` reads ``reference_features`` (the core ``reference_pass`` conditioner: the
  frozen backbone's tokens of the reference image, per block) and lets the video tokens of block i
  attend to the reference's tokens of block i.

Every output projection starts at zero, so the backbone's output is unchanged until they train.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from idvid.errors import ConfigError
from idvid.injection import TokenInjector
from idvid.registry import register_injector
from idvid_lynx.resampler import PerceiverResampler


class AdapterAttention(nn.Module):
    """Video tokens (queries) attend to context tokens; returns the residual for the video tokens.

    Queries and keys are RMS-normalised across heads (as Wan's attention does); ``to_out`` starts at
    zero. A converted Lynx model fills ``to_q``, ``norm_q``, ``norm_k``, ``to_out`` (and ``norm`` for the
    ID-adapter) from the base block's attention, and ``to_k``, ``to_v`` from Lynx's adapter layers.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        if dim % heads:
            raise ConfigError(
                f"heads={heads} does not divide the backbone's hidden size {dim}.",
                f"Choose heads among the divisors of {dim} (the backbone's own head count fits).",
            )
        self.heads = heads
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.to_k = nn.Linear(context_dim, dim)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)  # start as a no-op: the backbone's output is unchanged at step 0
        nn.init.zeros_(self.to_out.bias)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context's keys and values ``[B, L, dim]``: timestep-independent, so injectors compute them in
        ``prepare`` (once per video when sampling, not once per denoising step)."""
        return self.norm_k(self.to_k(context)), self.to_v(context)

    def forward(self, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.to(hidden_states.dtype).view(batch, x.shape[1], self.heads, width // self.heads).transpose(1, 2)

        query = heads(self.norm_q(self.to_q(self.norm(hidden_states))))
        attended = F.scaled_dot_product_attention(query, heads(key), heads(value))
        return self.to_out(attended.transpose(1, 2).reshape(batch, length, width))


def _heads(hidden_size: int, heads: int | None) -> int:
    return heads if heads is not None else max(1, hidden_size // 128)  # Wan's and CogVideoX's head width


@register_injector("lynx.id_adapter")
class LynxIdAdapter(TokenInjector):
    """Lynx's ID-adapter: face embedding -> resampler -> ``num_tokens`` tokens, cross-attended in each block.

    ``id_dim`` is the face embedding's width (ArcFace 512; the demo's dlib 128); the resampler's sizes
    default to Lynx's (width 1280, depth 4, 20 heads of 64, 16 queries); its tokens have the backbone's
    hidden size unless ``token_dim`` says otherwise. ``heads``: the attention's heads (default: hidden / 128).
    """

    consumes = ("face_embedding",)

    def __init__(
        self,
        backbone,
        site: str = "attn_ffn",
        blocks: Any = "all",
        id_dim: int = 512,
        num_tokens: int = 16,
        resampler_dim: int = 1280,
        resampler_depth: int = 4,
        resampler_heads: int = 20,
        resampler_dim_head: int = 64,
        ff_mult: int = 4,
        token_dim: int | None = None,
        heads: int | None = None,
        registers: int = 0,
    ):
        super().__init__(backbone, site=site, blocks=blocks)
        hidden, token_dim = backbone.hidden_size, token_dim or backbone.hidden_size
        self.id_dim = id_dim
        self.resampler = PerceiverResampler(
            id_dim, token_dim, resampler_dim, resampler_depth, resampler_dim_head, resampler_heads, num_tokens, ff_mult
        )
        heads = _heads(hidden, heads)
        self.attention = nn.ModuleList(AdapterAttention(hidden, token_dim, heads) for _ in self.block_indices)
        # Learned tokens each block's attention reads besides the identity tokens (Lynx's "registers").
        self.registers = nn.ParameterList(
            nn.Parameter(torch.randn(1, registers, token_dim) / hidden**0.5) for _ in self.block_indices if registers
        )
        self.slot = {block: i for i, block in enumerate(self.block_indices)}

    def identity_tokens(self, face_embedding: torch.Tensor) -> torch.Tensor:
        """``[B, id_dim]`` -> the resampler's ``[B, num_tokens, token_dim]`` identity tokens."""
        if face_embedding.dim() != 2 or face_embedding.shape[1] != self.id_dim:
            raise ConfigError(
                f"lynx.id_adapter expects face_embedding [B, {self.id_dim}] (id_dim={self.id_dim}) but got "
                f"{tuple(face_embedding.shape)}.",
                f"Set id_dim={face_embedding.shape[-1]} (the face backend's embedding width: dlib 128, ArcFace 512).",
            )
        parameter = self.resampler.latents
        return self.resampler(face_embedding.to(parameter.device, parameter.dtype).unsqueeze(1))

    def prepare(self, conditions, random) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each block's keys and values of the identity tokens (and its registers)."""
        tokens = self.identity_tokens(conditions["face_embedding"])
        prepared = {}
        for block, slot in self.slot.items():
            context = tokens
            if len(self.registers):
                registers = self.registers[slot].expand(tokens.shape[0], -1, -1)
                context = torch.cat([tokens, registers.to(tokens)], dim=1)
            prepared[block] = self.attention[slot].keys_values(context)
        return prepared

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared) -> torch.Tensor:
        return self.attention[self.slot[block_index]](hidden_states, *prepared[block_index])


@register_injector("lynx.ref_adapter")
class LynxRefAdapter(TokenInjector):
    """Lynx's Ref-adapter: the video tokens of block i attend to the reference's tokens of block i.

    It consumes the core ``reference_pass`` conditioner's ``reference_features``, which must record every
    block this adapter acts on (``blocks: all`` for both, as in Lynx). The features are layer-normalised
    (Lynx reads the normalised input of the reference pass's self-attention).
    """

    consumes = ("reference_features",)

    def __init__(self, backbone, site: str = "attn_ffn", blocks: Any = "all", heads: int | None = None):
        super().__init__(backbone, site=site, blocks=blocks)
        hidden = backbone.hidden_size
        self.feature_norm = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        heads = _heads(hidden, heads)
        self.attention = nn.ModuleList(AdapterAttention(hidden, hidden, heads) for _ in self.block_indices)
        self.slot = {block: i for i, block in enumerate(self.block_indices)}

    def prepare(self, conditions, random) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each block's keys and values of the reference's tokens of that block."""
        features = conditions["reference_features"]
        missing = [block for block in self.block_indices if block not in features]
        if missing:
            raise ConfigError(
                f"lynx.ref_adapter acts on blocks {missing}, but the reference pass recorded only blocks "
                f"{sorted(features)}.",
                "Make the reference_pass conditioner's `blocks` include every block of the Ref-adapter "
                "(blocks: all for both, as Lynx does).",
            )
        return {
            block: self.attention[slot].keys_values(self.feature_norm(features[block]))
            for block, slot in self.slot.items()
        }

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared) -> torch.Tensor:
        return self.attention[self.slot[block_index]](hidden_states, *prepared[block_index])
