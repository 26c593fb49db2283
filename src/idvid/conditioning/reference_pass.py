"""A pass of the backbone over the reference: its per-block hidden states as a condition.

Methods that read a reference through cross-attention to features of the backbone itself (Lynx's
Ref-adapter, MegActor-Σ's reference transformer) need the video tokens the DiT computes for the
reference image. This conditioner runs the backbone once over the reference's VAE latent (one latent
frame, the same encoding as ``reference_latents``) and records the video tokens at a site of chosen
blocks. It observes the blocks through the injection sites (an observer that adds nothing), so it
works on every backbone without knowing its block internals.

Frozen (the default), it is the backbone's own transformer run under ``no_grad``. Trainable, it is a
reference network of its own: a copy of the backbone's transformer made when the model is built
(same architecture and starting weights, as MegActor-Σ's reference transformer, a copy of its denoising
DiT), run in the training graph, whose weights train with the plan and are saved in checkpoints.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

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

    It runs once per batch (once per video at sampling time, before the denoising loop, shared by both
    CFG branches). ``trainable: false``: the backbone's own transformer as a frozen feature extractor
    (under ``no_grad``). ``trainable: true``: its own copy of the transformer (``self.transformer``, made by
    ``attach``), run in the training graph and trained with the plan (``model.trainable`` all, injectors
    or lora; a list of injector labels leaves it as it is).
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
                f"0..{backbone.num_layers - 1} (or all, odd, even, {{every: k, offset: o}}, {{last: n}}).",
            ) from None
        if text not in TEXT_CHOICES:
            raise ConfigError(
                f"reference_pass text={text!r} is not one of {', '.join(TEXT_CHOICES)}.",
                "Use text=empty (the empty prompt), text=caption (each sample's caption) or text=prompt with "
                "prompt='...' (one fixed prompt).",
            )
        self.trainable = bool(trainable)
        self.transformer: torch.nn.Module | None = None  # the trainable copy, made by attach
        self.timestep, self.text, self.prompt = float(timestep), text, prompt
        # At sampling time a batch has the reference's entries and the caption: every option can sample.
        self.reads = ("ref_image", "caption") if text == "caption" else ("ref_image",)

    @property
    def block_indices(self) -> list[int]:
        return self.observer.block_indices

    def attach(self, backbone) -> None:
        if self.trainable:  # the reference network: the backbone's transformer as built (widened), its own weights
            self.transformer = copy.deepcopy(backbone.transformer)
            self.transformer.requires_grad_(True)

    def forward(self, batch: Mapping[str, Any], backbone, random: BatchRandom) -> dict[str, Any]:
        if self.trainable and self.transformer is None:
            raise RuntimeError("a trainable reference_pass runs its own transformer: call attach(backbone) first")
        # Frozen: no graph even where gradients are on; trainable: a graph where they are (training, not sampling).
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable), _running(backbone, self.transformer):
            return self._pass(batch, backbone, random)

    def _pass(self, batch: Mapping[str, Any], backbone, random: BatchRandom) -> dict[str, Any]:
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


@contextmanager
def _running(backbone, transformer: torch.nn.Module | None) -> Iterator[None]:
    """Run ``backbone`` with ``transformer`` in place of its own (the contract's ``Backbone.transformer``, the
    network its forward runs), then put its own back; None: its own."""
    if transformer is None:
        yield
        return
    own = backbone.transformer
    backbone.transformer = transformer
    try:
        yield
    finally:
        backbone.transformer = own
