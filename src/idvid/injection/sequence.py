"""The ``sequence_concat`` site: reference tokens appended to the video's token sequence.

A :class:`SequenceConcatInjector` returns a reference, either latents ``[B, f_ref, C, h, w]`` (the
backbone patch-embeds them with its own patch embedding) or ready tokens ``[B, N_ref, D]``. The
backbone appends the reference tokens to the video tokens, runs its blocks, and drops them before
the output head: the prediction and the loss cover the video only, and the in-block sites
(``pre_attn``, ``attn_ffn``, ``post_attn``) see only video tokens. Its options, honoured by every
backbone that supports the site:

- ``positions``: the rotary positions of the reference tokens, in tokens: ``frame`` (an integer
  frame index, e.g. ``-1`` = just before the video, or ``after`` = just after its last frame; a
  reference of several frames takes consecutive indices) and ``height_offset`` / ``width_offset``
  added to the reference's own row and column indices (an integer, or ``after``: the video's token
  height / width, so the reference sits past the video's last row / column).
- ``timestep``: ``0`` (the reference is clean: its tokens are modulated with the embedding of
  timestep 0) or ``video`` (the video's timestep).
- ``attention``: ``full`` (every token attends to every token) or ``reference_isolated`` (video
  queries, and the text queries of a joint-attention backbone, see video + reference keys; reference
  queries see only reference keys).
- ``kv_cache``: at sampling, compute the reference's per-block keys and values once per video and
  reuse them at every step and both guidance branches. Only possible when the reference cannot
  depend on the noisy video (``reference_isolated`` with ``timestep: 0``); refused otherwise.

An injector may also add a residual to the reference tokens' own attention projections
(``projection_residual``, e.g. a LoRA that acts on the reference path only).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import torch

from idvid.backbones.info import BackboneInfo
from idvid.errors import ConfigError
from idvid.injection.injector import Conditions, Injector
from idvid.injection.sites import Site
from idvid.randomness import BatchRandom

#: the attention projections a ``projection_residual`` may act on
PROJECTIONS = ("q", "k", "v")


class ReferenceAttention(str, Enum):
    FULL = "full"
    REFERENCE_ISOLATED = "reference_isolated"


@dataclass(frozen=True)
class ReferencePositions:
    """Where the reference tokens sit in the rotary embedding's (frame, row, column) grid, in tokens."""

    frame: int | str = "after"  # an integer frame index, or "after" (the frame after the video's last)
    height_offset: int | str = 0  # tokens, or "after" (the video's token height)
    width_offset: int | str = 0  # tokens, or "after" (the video's token width)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "ReferencePositions":
        config = dict(config or {})
        unknown = set(config) - {"frame", "height_offset", "width_offset"}
        values = [config.get("frame", "after"), config.get("height_offset", 0), config.get("width_offset", 0)]
        if unknown or not all(v == "after" or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise ConfigError(
                f"sequence_concat positions={config} is not a reference position.",
                "Use {frame: <integer frame index, e.g. -1> or after, height_offset: <tokens> or after, "
                "width_offset: <tokens> or after}.",
            )
        return cls(*values)

    def start(self, video_grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The (frame, row, column) of the reference's first token, for video tokens laid out as ``video_grid``."""
        return tuple(
            size if value == "after" else int(value)
            for value, size in zip((self.frame, self.height_offset, self.width_offset), video_grid)
        )


class SequenceConcatInjector(Injector):
    """Base class of ``sequence_concat`` injectors: return the reference (``reference``)."""

    default_site = Site.SEQUENCE_CONCAT

    def __init__(
        self,
        backbone: BackboneInfo,
        positions: Mapping[str, Any] | None = None,
        timestep: int | str = "video",
        attention: str = "full",
        kv_cache: bool = False,
    ):
        super().__init__()
        self.site = Site.SEQUENCE_CONCAT
        self.backbone_info = backbone
        self.positions = ReferencePositions.from_config(positions)
        if timestep not in (0, "video"):
            raise ConfigError(
                f"{type(self).__name__}: timestep={timestep!r} is not a reference timestep.",
                "Use timestep=0 (a clean reference) or timestep=video (the video's own timestep).",
            )
        #: None: the reference tokens take the video's timestep; 0: they are modulated as clean
        self.reference_timestep: int | None = None if timestep == "video" else 0
        try:
            self.attention = ReferenceAttention(attention)
        except ValueError:
            raise ConfigError(
                f"{type(self).__name__}: attention={attention!r} is not an attention policy.",
                "Use attention=full or attention=reference_isolated.",
            ) from None
        if kv_cache and not self.reference_is_static:
            raise ConfigError(
                f"{type(self).__name__}: kv_cache=true asks to reuse the reference's keys and values across "
                f"denoising steps, but with attention={self.attention.value} and timestep={timestep} the reference "
                "tokens depend on the noisy video (they attend to it, or are modulated by its timestep).",
                "Set attention=reference_isolated and timestep=0 to cache them, or kv_cache=false.",
            )
        self.kv_cache = bool(kv_cache)

    @property
    def reference_is_static(self) -> bool:
        """True when the reference's hidden states cannot depend on the noisy video (nor on its timestep)."""
        return self.attention is ReferenceAttention.REFERENCE_ISOLATED and self.reference_timestep == 0

    def reference(self, conditions: Conditions, random: BatchRandom) -> torch.Tensor:
        """The reference: latents ``[B, f_ref, C, h, w]`` (C = the backbone's latent channels) or tokens ``[B, N, D]``.

        Called once per forward in training and once per video at sampling (timestep-independent).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement reference(conditions, random)")

    def projection_residual(self, block_index: int, projection: str, inputs: torch.Tensor) -> torch.Tensor | None:
        """A residual to add to the reference tokens' ``projection`` (q, k or v) output in block ``block_index``.

        ``inputs`` are the (normalised) reference tokens the projection reads, ``[B, N_ref, D]``. None:
        the backbone's own projection only (the default). The video tokens never see this residual.
        """
        return None


@dataclass
class PreparedReference:
    """A reference of one forward (or one sampling run): its injector, its value and any cached keys/values.

    ``cache`` is backbone-owned: what ``Backbone.cache_reference`` computed once (per block keys and values).
    """

    injector: SequenceConcatInjector
    value: torch.Tensor
    cache: Any = None

    @property
    def is_latent(self) -> bool:
        return self.value.dim() == 5


def check_reference(injector: SequenceConcatInjector, value: torch.Tensor, info: BackboneInfo) -> None:
    """Refuse a reference of the wrong shape for this backbone, naming the shape and the fix."""
    name = type(injector).__name__
    if value.dim() == 3:
        if value.shape[-1] != info.hidden_size:
            raise ValueError(
                f"{name} returned reference tokens {tuple(value.shape)}; the backbone's tokens are "
                f"{info.hidden_size} wide. Return [B, N_ref, {info.hidden_size}] tokens or latents [B, f, C, h, w]."
            )
        return
    if value.dim() != 5 or value.shape[2] != info.latent_channels:
        raise ValueError(
            f"{name} returned a reference of shape {tuple(value.shape)}; expected latents [B, f_ref, "
            f"{info.latent_channels}, h, w] (the backbone's latent channels) or tokens [B, N_ref, {info.hidden_size}]."
        )
    check_reference_latent_size(injector, info, *value.shape[1:2], *value.shape[3:])


def check_reference_latent_size(
    injector: SequenceConcatInjector, info: BackboneInfo, frames: int, height: int, width: int
) -> None:
    """Refuse a reference latent ``frames x height x width`` that the backbone's patching does not tile."""
    patch, patch_t = info.patch_size, info.patch_size_t
    if height % patch or width % patch or frames % patch_t:
        raise ConfigError(
            f"{type(injector).__name__}: the reference latent is {frames} x {height} x {width} (frames x height x "
            f"width), which the backbone's patching ({patch_t} x {patch} x {patch}) does not tile.",
            f"Give references whose latent height and width are multiples of {patch} (images whose sides are "
            f"multiples of {patch * info.vae_spatial_compression} pixels), e.g. the video's own size.",
        )
