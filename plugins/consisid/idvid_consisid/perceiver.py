"""ConsisID's local facial extractor and perceiver cross-attention.

Module and parameter names follow diffusers' ``ConsisIDTransformer3DModel`` so that
official weights map onto them key for key, and the arithmetic follows it too
(q and k each scaled by d^-1/4 before the product, softmax in float32), so that
outputs match to float32 precision.
"""

from __future__ import annotations

import torch
from torch import nn


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention ``[B, Nq, H*d]`` x ``[B', Nk, H*d]`` -> ``[B, Nq, H*d]``.

    ``B'`` may be 1 and broadcast over ``B``: diffusers' ConsisID pipeline passes one set of
    identity tokens for both classifier-free-guidance branches.
    """
    batch, queries, inner = query.shape
    head_dim = inner // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1, heads, head_dim).transpose(1, 2)

    query, key, value = split(query), split(key), split(value)
    # Scaling q and k separately by d^-1/4 (rather than the product by d^-1/2) is kinder to fp16.
    scale = head_dim**-0.25
    weight = (query * scale) @ (key * scale).transpose(-2, -1)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return (weight @ value).transpose(1, 2).reshape(batch, queries, inner)


class PerceiverAttention(nn.Module):
    """Queries from ``latents`` attend to ``context`` (keys/values).

    ``keys_include_latents=True`` is the Q-Former step inside the extractor: keys and values
    come from ``cat(context, latents)``. ``False`` is the perceiver cross-attention that adds
    identity to video tokens: video tokens are the queries, identity tokens the keys/values.
    """

    def __init__(
        self, dim: int, dim_head: int = 64, heads: int = 8, kv_dim: int | None = None, keys_include_latents: bool = True
    ):
        super().__init__()
        inner = dim_head * heads
        kv_dim = kv_dim or dim
        if keys_include_latents and kv_dim != dim:
            raise ValueError(f"keys that include the latents need kv_dim == dim, got kv_dim={kv_dim}, dim={dim}.")
        self.heads = heads
        self.keys_include_latents = keys_include_latents
        self.norm1 = nn.LayerNorm(kv_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context, latents = self.norm1(context), self.norm2(latents)
        kv_input = torch.cat([context, latents], dim=1) if self.keys_include_latents else context
        key, value = self.to_kv(kv_input).chunk(2, dim=-1)
        return self.to_out(_attend(self.to_q(latents), key, value, self.heads))


def perceiver_cross_attention(dim: int, dim_head: int = 128, heads: int = 16, kv_dim: int = 2048) -> PerceiverAttention:
    """Video tokens (queries) attend to identity tokens (keys/values)."""
    return PerceiverAttention(dim, dim_head=dim_head, heads=heads, kv_dim=kv_dim, keys_include_latents=False)


def _mlp(in_dim: int, dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, dim),
        nn.LayerNorm(dim),
        nn.LeakyReLU(),
        nn.Linear(dim, dim),
        nn.LayerNorm(dim),
        nn.LeakyReLU(),
        nn.Linear(dim, out_dim),
    )


class LocalFacialExtractor(nn.Module):
    """Fuse ``id_cond`` [B, id_dim] and ``num_scale`` ViT feature maps into [B, num_queries, output_dim].

    ``num_queries`` learned queries plus ``num_id_token`` tokens mapped from ``id_cond``
    run ``depth`` perceiver layers, ``depth / num_scale`` per ViT depth; each layer's
    context is the ID tokens plus that depth's (mapped) ViT tokens.
    """

    def __init__(
        self,
        id_dim: int = 1280,
        vit_dim: int = 1024,
        depth: int = 10,
        dim_head: int = 64,
        heads: int = 16,
        num_id_token: int = 5,
        num_queries: int = 32,
        output_dim: int = 2048,
        ff_mult: int = 4,
        num_scale: int = 5,
    ):
        super().__init__()
        if depth % num_scale:
            raise ValueError(f"LFE depth={depth} must be a multiple of num_scale={num_scale} (layers per ViT depth).")
        self.sizes = dict(
            id_dim=id_dim,
            vit_dim=vit_dim,
            depth=depth,
            dim_head=dim_head,
            heads=heads,
            num_id_token=num_id_token,
            num_queries=num_queries,
            output_dim=output_dim,
            ff_mult=ff_mult,
            num_scale=num_scale,
        )
        self.id_dim, self.vit_dim, self.output_dim = id_dim, vit_dim, output_dim
        self.num_id_token, self.num_queries, self.num_scale = num_id_token, num_queries, num_scale
        self.layers_per_scale = depth // num_scale
        init_scale = vit_dim**-0.5
        self.latents = nn.Parameter(torch.randn(1, num_queries, vit_dim) * init_scale)
        self.proj_out = nn.Parameter(init_scale * torch.randn(vit_dim, output_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim=vit_dim, dim_head=dim_head, heads=heads),
                    nn.Sequential(
                        nn.LayerNorm(vit_dim),
                        nn.Linear(vit_dim, vit_dim * ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(vit_dim * ff_mult, vit_dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )
        for i in range(num_scale):  # attribute names match the released weights
            setattr(self, f"mapping_{i}", _mlp(vit_dim, vit_dim, vit_dim))
        self.id_embedding_mapping = _mlp(id_dim, vit_dim, vit_dim * num_id_token)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        if id_cond.shape[-1] != self.id_dim:
            raise ValueError(
                f"id_cond has width {id_cond.shape[-1]} but the LFE expects id_dim={self.id_dim}; set the injector's "
                f"id_dim to the face embedding width + CLIP projection width of your identity_features conditioner."
            )
        if len(vit_hidden) != self.num_scale or vit_hidden[0].shape[-1] != self.vit_dim:
            raise ValueError(
                f"id_vit_hidden has {len(vit_hidden)} maps of width {vit_hidden[0].shape[-1]}; the LFE expects "
                f"num_scale={self.num_scale} maps of width vit_dim={self.vit_dim}. Match the conditioner's vit_layers "
                f"and CLIP hidden size."
            )
        batch = id_cond.shape[0]
        id_tokens = self.id_embedding_mapping(id_cond).reshape(batch, self.num_id_token, self.vit_dim)
        latents = torch.cat([self.latents.repeat(batch, 1, 1), id_tokens], dim=1)
        for scale in range(self.num_scale):
            context = torch.cat([id_tokens, getattr(self, f"mapping_{scale}")(vit_hidden[scale])], dim=1)
            start = scale * self.layers_per_scale
            for attention, feed_forward in self.layers[start : start + self.layers_per_scale]:
                latents = latents + attention(context, latents)
                latents = latents + feed_forward(latents)
        return latents[:, : self.num_queries] @ self.proj_out
