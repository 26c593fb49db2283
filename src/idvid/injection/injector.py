"""Base classes every injector plugin derives from.

Two shapes of injector exist, matching the two kinds of site:

* ``InputConcatInjector`` (site ``input_concat``): returns extra latent channels that
  are concatenated to the noisy video latent. The backbone widens its input layer.
* ``TokenInjector`` (sites ``pre_attn``, ``attn_ffn``, ``post_attn``): returns a
  residual added to the video tokens at that site of each selected block.
* ``TextTokenInjector`` (site ``text_tokens``): owns learned embedding rows of new text tokens
  and installs them on the built backbone once (``attach``), through the backbone contract.

An injector declares the named conditions it consumes (``self.consumes``); the
plan refuses to start when no conditioner produces one of them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from idvid.backbones.info import BackboneInfo
from idvid.injection.sites import BlockSelection, Site, parse_site
from idvid.randomness import BatchRandom

Conditions = Mapping[str, Any]


class Injector(nn.Module):
    #: the site an injector of this class uses when the config does not say
    default_site: ClassVar[Site]
    #: every condition this class can consume (for listings); instances narrow it in ``self.consumes``
    consumes: tuple[str, ...] = ()

    site: Site


class InputConcatInjector(Injector):
    default_site = Site.INPUT_CONCAT

    def __init__(self, backbone: BackboneInfo, channels: int):
        super().__init__()
        self.site = Site.INPUT_CONCAT
        self.channels = channels
        self.backbone_info = backbone

    def concat_latents(self, conditions: Conditions, noisy_latents: torch.Tensor) -> torch.Tensor:
        """Return ``[B, F, self.channels, h, w]`` to concatenate to ``noisy_latents`` ``[B, F, C, h, w]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement concat_latents(conditions, noisy_latents)")


class TextTokenInjector(Injector):
    """Identity that enters through the prompt: new text tokens whose embedding rows this injector owns.

    ``attach(backbone)`` runs once, after the backbone is built (and before a checkpoint's weights
    load into the model): it adds the tokens with ``Backbone.add_text_tokens`` and makes the text
    encoder read their rows from this injector (``Backbone.set_text_token_embeddings``). The
    injector's parameters train with the plan; the backbone's own rows never change.
    """

    default_site = Site.TEXT_TOKENS

    def __init__(self, backbone: BackboneInfo):
        super().__init__()
        self.site = Site.TEXT_TOKENS
        self.backbone_info = backbone

    def attach(self, backbone: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement attach(backbone)")


class TokenInjector(Injector):
    default_site = Site.ATTN_FFN
    #: True: ``forward`` also takes ``token_grid=(frames, height, width)``, the video tokens' layout in tokens
    #: (frame-major, then rows, then columns), e.g. to attend across frames or within each frame
    reads_token_grid: ClassVar[bool] = False

    def __init__(self, backbone: BackboneInfo, site: str | Site | None = None, blocks: Any = "all"):
        super().__init__()
        self.site = parse_site(site or self.default_site)
        if not self.site.in_block:
            raise ValueError(
                f"{type(self).__name__} adds to video tokens inside blocks; site {self.site.value!r} is not in a "
                f"block (input_concat is for input-channel injectors, text_tokens for text-token injectors). "
                f"Use one of: pre_attn, attn_ffn, post_attn."
            )
        self.backbone_info = backbone
        self.block_indices: list[int] = BlockSelection(blocks).indices(backbone.num_layers)

    def prepare(self, conditions: Conditions, random: BatchRandom) -> Any:
        """Timestep-independent work, done once per forward (and once per video when sampling).

        Draw any randomness through ``random`` (never torch's global RNG): resume and data-parallel
        runs stay exact.
        """
        return None

    def forward(self, block_index: int, hidden_states: torch.Tensor, prepared: Any) -> torch.Tensor:
        """Return the residual to add to ``hidden_states`` ``[B, N, D]`` (video tokens) at ``block_index``.

        A class with ``reads_token_grid = True`` defines ``forward(block_index, hidden_states, prepared,
        token_grid)`` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(block_index, hidden_states, prepared)")
