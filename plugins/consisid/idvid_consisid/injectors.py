"""ConsisID's two identity paths as idvid injectors."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from idvid.backbones import BackboneInfo
from idvid.injection import Conditions, InputConcatInjector, TokenInjector
from idvid.randomness import BatchRandom
from idvid.registry import register_injector
from idvid_consisid.perceiver import LocalFacialExtractor, perceiver_cross_attention


@register_injector("consisid.global_face_latent")
class GlobalFaceLatent(InputConcatInjector):
    """Low-frequency path: face latent at latent frame 0, keypoint-drawing latent at frame 1, zeros after.

    It adds ``latent_channels`` input channels (CogVideoX: 16 -> 32) and has no weights of its
    own: what learns is the widened input layer, whose new channels start at zero.
    """

    consumes = ("face_latent", "kps_latent")

    def __init__(self, backbone: BackboneInfo, use_kps: bool = True):
        super().__init__(backbone, channels=backbone.latent_channels)
        self.use_kps = use_kps
        self.consumes = ("face_latent", "kps_latent") if use_kps else ("face_latent",)

    def concat_latents(self, conditions: Conditions, noisy_latents: torch.Tensor) -> torch.Tensor:
        extra = torch.zeros_like(noisy_latents)
        extra[:, 0] = conditions["face_latent"][:, 0].to(extra)
        if self.use_kps:
            if noisy_latents.shape[1] < 2:
                raise ValueError(
                    "use_kps puts the keypoint latent at latent frame 1, but the video has only 1 latent frame; "
                    "use more frames (num_frames > vae temporal compression) or use_kps=false."
                )
            extra[:, 1] = conditions["kps_latent"][:, 0].to(extra)
        return extra


@register_injector("consisid.local_face_cross_attention")
class LocalFaceCrossAttention(TokenInjector):
    """High-frequency path: LFE identity tokens, then ``scale * CA(tokens, video)`` at each selected block.

    The LFE runs once per forward in ``prepare`` (it does not depend on the timestep), so a
    sampler computes it once per video. ConsisID's DropToken is the recipe step ``consisid.drop_token``.
    """

    consumes = ("id_cond", "id_vit_hidden")

    def __init__(
        self,
        backbone: BackboneInfo,
        extractor: dict[str, Any],
        site: str = "attn_ffn",
        blocks: Any = "all",
        scale: float = 1.0,
        cross_attn_dim_head: int = 128,
        cross_attn_heads: int = 16,
    ):
        """``extractor``: the LocalFacialExtractor's sizes (id_dim, vit_dim, depth, dim_head, heads,
        num_id_token, num_queries, output_dim, ff_mult, num_scale)."""
        super().__init__(backbone, site=site, blocks=blocks)
        self.scale = scale
        self.local_facial_extractor = LocalFacialExtractor(**extractor)
        self.perceiver_cross_attention = nn.ModuleList(
            perceiver_cross_attention(
                backbone.hidden_size,
                dim_head=cross_attn_dim_head,
                heads=cross_attn_heads,
                kv_dim=self.local_facial_extractor.output_dim,
            )
            for _ in self.block_indices
        )
        self._module_of_block = {block: slot for slot, block in enumerate(self.block_indices)}

    def prepare(self, conditions: Conditions, random: BatchRandom) -> torch.Tensor:
        """The identity tokens ``[B, num_queries, output_dim]`` (deterministic: ``random`` is not drawn)."""
        id_cond = conditions["id_cond"]
        vit_hidden = [h.to(id_cond) for h in conditions["id_vit_hidden"]]
        return self.local_facial_extractor(id_cond, vit_hidden)

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        attention = self.perceiver_cross_attention[self._module_of_block[block_index]]
        return self.scale * attention(prepared, hidden_states)
