"""A video self-attention exclusion: video tokens in one region may not attend to video tokens in another.

Whoever builds the batch (a recipe step's ``on_batch``) asks for it with two pixel masks in the batch,
``attention_exclusion_queries`` and ``attention_exclusion_keys``, each ``[B, F, 1, H, W]`` in {0, 1} on the
video's frames and size. In every block's self-attention, a video query token in the first region then
does not attend to the video key tokens in the second: its softmax runs over the other keys. Every
other query attends as usual, and text tokens (a joint-attention backbone's), reference tokens (site
``sequence_concat``) and cross-attention are untouched. A sample whose query mask is all zero (or whose
key mask is) is unchanged; a batch where no sample excludes anything runs the backbone's usual attention.

The training module hands it to the backbone in the ``PreparedInjection`` (``attention_exclusion``); the
backbone maps the pixel masks to its token grid (``Backbone.video_attention_mask``) and applies the
result as a boolean attention mask. It is a training-time device (a recipe step writes the masks):
sampling never builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from idvid.errors import ConfigError

#: batch key of the pixel mask of the query tokens that are restricted, ``[B, F, 1, H, W]``
QUERIES_KEY = "attention_exclusion_queries"
#: batch key of the pixel mask of the key tokens those queries may not read, ``[B, F, 1, H, W]``
KEYS_KEY = "attention_exclusion_keys"


@dataclass(frozen=True)
class AttentionExclusion:
    """Video query tokens in ``queries`` may not attend to video key tokens in ``keys`` (pixel masks)."""

    queries: torch.Tensor  # [B, F, 1, H, W] in {0, 1}
    keys: torch.Tensor  # [B, F, 1, H, W] in {0, 1}

    def __post_init__(self) -> None:
        shape = tuple(self.queries.shape)
        if len(shape) != 5 or shape[2] != 1 or tuple(self.keys.shape) != shape:
            raise ValueError(
                f"An attention exclusion needs two pixel masks of one shape [B, F, 1, H, W]; got {QUERIES_KEY} "
                f"{shape} and {KEYS_KEY} {tuple(self.keys.shape)}. Give both on the video's frames and size."
            )

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> "AttentionExclusion | None":
        """The batch's exclusion, or None when it asks for none."""
        present = [key for key in (QUERIES_KEY, KEYS_KEY) if key in batch]
        if not present:
            return None
        if len(present) == 1:
            missing = KEYS_KEY if present == [QUERIES_KEY] else QUERIES_KEY
            raise ConfigError(
                f"The batch has {present[0]} but not {missing}: an attention exclusion needs both masks.",
                f"Have the recipe step that writes {present[0]} also write {missing} (all zeros: no exclusion).",
            )
        return cls(batch[QUERIES_KEY], batch[KEYS_KEY])


__all__ = ["AttentionExclusion", "KEYS_KEY", "QUERIES_KEY"]
