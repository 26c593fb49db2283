"""A pass of the backbone over the reference: its per-block hidden states as a condition.

Methods that read a reference through cross-attention to features of the backbone itself (Lynx's
Ref-adapter, MegActor-Σ's reference transformer) need the video tokens the DiT computes for the
reference image. This conditioner runs the backbone once over the reference's VAE latent (one latent
frame, the same encoding as ``reference_latents``) and records the video tokens at a site of chosen
blocks. It observes the blocks through the injection sites (an observer that adds nothing), so it
works on every backbone without knowing its block internals.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from idvid.conditioning.base import Conditioner
from idvid.errors import ConfigError
from idvid.injection.injector import TokenInjector
from idvid.injection.plan import PreparedInjection
from idvid.randomness import BatchRandom
from idvid.registry import register_conditioner

TEXT_CHOICES = ("empty", "caption", "prompt")


class _BlockObserver(TokenInjector):
    """Records the video tokens at its site of its blocks and adds nothing to them."""

    def __init__(self, backbone, site, blocks):
        super().__init__(backbone, site=site, blocks=blocks)
        self.recorded: dict[int, torch.Tensor] = {}

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared: Any) -> torch.Tensor:
        self.recorded[block_index] = hidden_states
        return hidden_states.new_zeros(())  # a zero residual: the pass runs the backbone unchanged


@register_conditioner("reference_pass")
class ReferencePass(Conditioner):
    """``reference_features``: ``{block index: [B, N_ref, hidden_size]}``, the reference's video tokens.

    The backbone runs over the reference's latent (``ref_image`` encoded by the backbone's VAE, one
    latent frame ``[B, 1, C, h, w]``) at model timestep ``timestep`` (0: the clean reference, as Lynx
    does), with the text ``text``: ``empty`` (the empty prompt), ``caption`` (the sample's caption) or
    ``prompt`` (the fixed string ``prompt``, e.g. Lynx's "image of a face"). The tokens are recorded at
    ``site`` of each block in ``blocks`` (any block selection: ``all``, ``odd``, a list ...):
    ``post_attn`` is a block's output, ``pre_attn`` its input. Input-concat channels of a widened
    backbone are zero for the reference.

    It runs once per batch (once per video at sampling time, before the denoising loop) under
    ``torch.no_grad``: the backbone is used as a frozen feature extractor. ``trainable: true`` (a
    reference network that learns, as in MegActor-Σ) is reserved and refused for now: conditioners run
    outside the training graph.
    """

    produces = ("reference_features",)

    def __init__(
        self,
        backbone,
        blocks: Any = "all",
        site: str = "post_attn",
        timestep: float = 0.0,
        text: str = "empty",
        prompt: str = "",
        trainable: bool = False,
    ):
        super().__init__(backbone)
        try:
            self.observer = _BlockObserver(backbone, site, blocks)
        except ValueError as error:
            raise ConfigError(
                f"reference_pass cannot observe site={site!r}, blocks={blocks!r}: {error}",
                f"Give a site in a block (pre_attn, attn_ffn or post_attn) and blocks among "
                f"0..{backbone.num_layers - 1} (or all, odd, even, {{every: k, offset: o}}).",
            ) from None
        if text not in TEXT_CHOICES:
            raise ConfigError(
                f"reference_pass text={text!r} is not one of {', '.join(TEXT_CHOICES)}.",
                "Use text=empty (the empty prompt), text=caption (each sample's caption) or text=prompt with "
                "prompt='...' (one fixed prompt).",
            )
        if trainable:
            raise ConfigError(
                "reference_pass trainable=true is not supported yet: conditioners run outside the training graph "
                "(under no_grad), so a reference network cannot learn through this conditioner.",
                "Set trainable=false (a frozen pass of the backbone, as Lynx uses).",
            )
        self.timestep, self.text, self.prompt = float(timestep), text, prompt
        # At sampling time a batch has the reference's entries and the caption: every option can sample.
        self.reads = ("ref_image", "caption") if text == "caption" else ("ref_image",)

    @property
    def block_indices(self) -> list[int]:
        return self.observer.block_indices

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any], backbone, random: BatchRandom) -> dict[str, Any]:
        image = batch["ref_image"]
        latents = backbone.encode_video(image.unsqueeze(1), random)  # [B, 1, C, h, w]
        extra = backbone.input_layer.in_channels - latents.shape[2]
        if extra > 0:  # a backbone widened for input_concat injectors: the reference has none of those channels
            latents = torch.cat([latents, latents.new_zeros(*latents.shape[:2], extra, *latents.shape[3:])], dim=2)
        text = backbone.encode_text(self._captions(batch, latents.shape[0]))
        timestep = torch.full((latents.shape[0],), self.timestep, device=latents.device)
        self.observer.recorded = {}
        backbone(latents, timestep, text.to(latents.device), PreparedInjection([(self.observer, None)]))
        recorded, self.observer.recorded = self.observer.recorded, {}
        return {"reference_features": {block: recorded[block] for block in self.block_indices}}

    def _captions(self, batch: Mapping[str, Any], size: int) -> list[str]:
        if self.text == "caption":
            return list(batch["caption"])
        return [self.prompt if self.text == "prompt" else ""] * size
