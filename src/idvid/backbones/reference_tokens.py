"""What every backbone adapter shares to run reference tokens (site ``sequence_concat``).

An adapter embeds the reference (its own patch embedding, rotary positions and timestep
modulation, see ``idvid.injection.sequence``) into a :class:`ReferenceStream`, carries the stream's
tokens through its blocks beside the video tokens, and drops them before the output head. In
self-attention, the video queries (and a joint-attention backbone's text queries) read the video's
keys and the reference's; the reference queries read both (``full``) or only the reference's
(``reference_isolated``): :func:`attend_with_reference`. Two attention calls instead of one masked
call: the isolated policy needs no mask, and the reference's keys and values can come from a cache.

When the reference cannot depend on the noisy video, an adapter computes its per-block keys and values
once (``Backbone.cache_reference``); the blocks then run the video tokens only, reading
``ReferenceStream.cached[block]``. Both paths compute the reference's keys and values with the same
operations on the same inputs, so the cached sampling equals the uncached one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from idvid.injection.sequence import PROJECTIONS, ReferenceAttention, SequenceConcatInjector

#: one block's reference keys and values, ``[B, heads, N_ref, head_dim]`` each
KeyValue = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ReferenceStream:
    """The reference tokens of one forward, as an adapter carries them through its blocks."""

    injector: SequenceConcatInjector
    tokens: torch.Tensor | None  # [B, N_ref, D]; None when every block's keys and values are cached
    rotary: Any  # the family's rotary embedding of the reference tokens (None: the family has none)
    modulation: Any  # the family's timestep embedding for the reference tokens
    cached: list[KeyValue] | None = None  # per block, from Backbone.cache_reference

    @property
    def isolated(self) -> bool:
        return self.injector.attention is ReferenceAttention.REFERENCE_ISOLATED

    @property
    def num_tokens(self) -> int:
        """How many reference tokens (keys) the blocks' attention reads."""
        return self.tokens.shape[1] if self.tokens is not None else self.cached[0][0].shape[2]


def project_reference(
    stream: ReferenceStream, block_index: int, projections: dict[str, torch.nn.Module], inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The reference tokens' q, k, v projections of block ``block_index``, plus the injector's own residuals."""
    outputs = {}
    for name in PROJECTIONS:
        output = projections[name](inputs)
        residual = stream.injector.projection_residual(block_index, name, inputs)
        outputs[name] = output if residual is None else output + residual.to(output)
    return outputs


def attend_with_reference(
    main: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    reference_key_value: KeyValue,
    reference_query: torch.Tensor | None,
    isolated: bool,
    main_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention outputs of the main tokens and of the reference tokens, ``[B, heads, N, head_dim]``.

    ``main`` is the (query, key, value) of the video (and text) tokens; the main queries read the main
    keys and the reference keys (``main`` None: the reference alone). ``reference_query`` (None when the
    reference's keys and values are cached and the reference itself no longer runs) reads only the
    reference keys when ``isolated``, else all. ``main_mask`` (an attention exclusion,
    ``idvid.backbones.attention_exclusion.surround_video_mask``) is the boolean mask of the main queries
    over main + reference keys; the reference queries never take it.
    """
    reference_key, reference_value = reference_key_value
    main_out = all_keys = all_values = None
    if main is not None:  # None: the reference alone (computing its cache)
        query, key, value = main
        all_keys, all_values = torch.cat([key, reference_key], dim=2), torch.cat([value, reference_value], dim=2)
        main_out = F.scaled_dot_product_attention(query, all_keys, all_values, attn_mask=main_mask)
    if reference_query is None:
        return main_out, None
    if isolated:
        reference_out = F.scaled_dot_product_attention(reference_query, reference_key, reference_value)
    else:
        reference_out = F.scaled_dot_product_attention(reference_query, all_keys, all_values)
    return main_out, reference_out


def reference_grid_positions(
    injector: SequenceConcatInjector,
    video_grid: tuple[int, int, int],
    grid: tuple[int, int, int] | None,
    num_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame, row, column) of each reference token, in tokens, as the injector's ``positions`` say.

    ``video_grid`` is the video tokens' (frames, rows, columns), ``grid`` the reference's, frame-major;
    ready tokens (no grid) sit in one row of one frame.
    """
    frames, rows, columns = grid if grid is not None else (1, 1, num_tokens)
    frame, row, column = (
        torch.arange(size, dtype=torch.float32) + first
        for size, first in zip((frames, rows, columns), injector.positions.start(video_grid))
    )
    frame, row, column = torch.meshgrid(frame, row, column, indexing="ij")
    return frame.flatten(), row.flatten(), column.flatten()
