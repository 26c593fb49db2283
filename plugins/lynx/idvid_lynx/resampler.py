"""The Perceiver resampler of Lynx's ID-adapter: one face embedding -> a fixed number of identity tokens.

Learned query tokens attend (over the embedding and themselves) through a few Perceiver layers; the
result is projected to the adapter's token width. The parameter names follow the IP-Adapter-style
resampler Lynx releases (``resampler.safetensors``), so its weights load without renaming:
``latents``, ``proj_in``, ``layers.<i>.0`` (attention: ``norm1``, ``norm2``, ``to_q``, ``to_kv``,
``to_out``), ``layers.<i>.1`` (feed-forward: LayerNorm, Linear, GELU, Linear), ``proj_out``, ``norm_out``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PerceiverLayerAttention(nn.Module):
    """The queries attend to the context and to themselves (keys and values of both, queries of the latter)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # the context
        self.norm2 = nn.LayerNorm(dim)  # the queries
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        context, queries = self.norm1(context), self.norm2(queries)
        key, value = self.to_kv(torch.cat([context, queries], dim=1)).chunk(2, dim=-1)
        batch, length, _ = queries.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, x.shape[1], self.heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.to_q(queries)), heads(key), heads(value))
        return self.to_out(attended.transpose(1, 2).reshape(batch, length, -1))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverResampler(nn.Module):
    """``[B, L, embedding_dim]`` -> ``[B, num_queries, output_dim]`` identity tokens."""

    def __init__(
        self,
        embedding_dim: int,
        output_dim: int,
        dim: int = 1280,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 20,
        num_queries: int = 16,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverLayerAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        context = self.proj_in(embeddings)
        queries = self.latents.expand(embeddings.shape[0], -1, -1)
        for attention, ff in self.layers:
            queries = queries + attention(context, queries)
            queries = queries + ff(queries)
        return self.norm_out(self.proj_out(queries))
