"""The injection sites and block selection.

A site names a place in a DiT where an identity signal can enter. Sites are the
contract between injectors (plugins, which know *what* to add) and backbone
adapters (which know *where* that place is inside their blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Site(str, Enum):
    INPUT_CONCAT = "input_concat"
    PRE_ATTN = "pre_attn"
    ATTN_FFN = "attn_ffn"
    POST_ATTN = "post_attn"
    TEXT_TOKENS = "text_tokens"
    SEQUENCE_CONCAT = "sequence_concat"

    @property
    def description(self) -> str:
        return SITE_DESCRIPTIONS[self]

    @property
    def in_block(self) -> bool:
        return self not in (Site.INPUT_CONCAT, Site.TEXT_TOKENS, Site.SEQUENCE_CONCAT)


SITE_DESCRIPTIONS = {
    Site.INPUT_CONCAT: "extra latent channels concatenated to the noisy latent; the patch embedding is widened, "
    "new channels start at zero (low-frequency path)",
    Site.PRE_ATTN: "added to a block's input residual stream, before its attention",
    Site.ATTN_FFN: "added to the residual stream after attention and before the FFN, so the FFN sees it",
    Site.POST_ATTN: "added to a block's output, after the FFN (where the released ConsisID weights act)",
    Site.TEXT_TOKENS: "new tokens of the text encoder's vocabulary with learned embedding rows, named in prompts "
    "through a placeholder (textual inversion); the rest of the table stays as loaded",
    Site.SEQUENCE_CONCAT: "reference tokens appended to the video tokens (a reference latent patch-embedded by the "
    "backbone's own embedding), with their own rotary positions, timestep and attention policy (full or "
    "reference_isolated); dropped before the output head, so the prediction covers the video only",
}

# Sites in the order a block visits them.
BLOCK_SITES = (Site.PRE_ATTN, Site.ATTN_FFN, Site.POST_ATTN)


def parse_site(value: str | Site) -> Site:
    try:
        return Site(value)
    except ValueError:
        names = ", ".join(s.value for s in Site)
        raise ValueError(f"Unknown injection site {value!r}; the sites are: {names}.") from None


@dataclass(frozen=True)
class BlockSelection:
    """Which transformer blocks an in-block injector acts on.

    Config forms: ``all``, ``odd``, ``even``, ``{every: k, offset: o}`` (blocks o, o+k, ...),
    ``{last: n}`` (the last n blocks, all of them when the backbone has fewer), or an explicit list of
    indices such as ``[0, 3, 7]``.
    """

    spec: Any = "all"

    def indices(self, num_layers: int) -> list[int]:
        spec = self.spec
        if isinstance(spec, str):
            if spec == "all":
                return list(range(num_layers))
            if spec == "odd":
                return list(range(1, num_layers, 2))
            if spec == "even":
                return list(range(0, num_layers, 2))
            raise ValueError(
                f"Unknown block selection {spec!r}; use 'all', 'odd', 'even', {{every: k, offset: o}}, "
                f"{{last: n}} or a list of block indices."
            )
        if (isinstance(spec, dict) or hasattr(spec, "keys")) and "last" in spec:
            last = int(spec["last"])
            if set(spec.keys()) != {"last"} or last < 1:
                raise ValueError(f"Bad block selection {dict(spec)!r}; expected {{last: n >= 1}}.")
            return list(range(max(0, num_layers - last), num_layers))
        if isinstance(spec, dict) or hasattr(spec, "keys"):
            unknown = set(spec.keys()) - {"every", "offset"}
            every, offset = int(spec.get("every", 1)), int(spec.get("offset", 0))
            if unknown or every < 1 or offset < 0:
                raise ValueError(f"Bad block selection {dict(spec)!r}; expected {{every: k >= 1, offset: o >= 0}}.")
            return list(range(offset, num_layers, every))
        indices = [int(i) for i in spec]
        bad = [i for i in indices if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"Block indices {bad} are out of range for a backbone with {num_layers} blocks "
                f"(valid: 0..{num_layers - 1})."
            )
        if len(set(indices)) != len(indices):
            raise ValueError(f"Block list {indices} repeats an index; list each block once.")
        return sorted(indices)
