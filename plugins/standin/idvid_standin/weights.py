"""``convert --from standin``: Stand-In's released LoRA file as a kit checkpoint of ``experiment=standin``.

Stand-In's file (e.g. ``Stand-In_wan2.1_T2V_14B.ckpt``) is a torch checkpoint whose ``state_dict`` (or
top level) holds, for every block ``i`` of the Wan transformer, the reference tokens' LoRA on the
self-attention's projections: ``blocks.{i}.self_attn.{q,k,v}_loras.{down,up}.weight`` (``down``
``[rank, width]``, ``up`` ``[width, rank]``, no scaling: alpha = rank). Each LoRA's output is added to the
projection of the reference tokens before the QK norm, which is what ``standin.reference`` does. The
last block's q LoRA is left out: it can never change the output (see the injector). The base model
is not in the file: give it with ``backbone=wan_tiny backbone.pretrained=<a Wan2.1-T2V-14B diffusers folder>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from idvid.errors import CorruptFileError, MissingFileError
from idvid.interop import ConvertedModel
from idvid.registry import register_format

KEY = re.compile(r"^blocks\.(\d+)\.self_attn\.([qkv])_loras\.(down|up)\.weight$")
LABEL = "reference"  # the experiment's injector label


def read_standin_lora(path: Path) -> dict[tuple[int, str, str], torch.Tensor]:
    """(block, projection, down|up) -> weight, from a file in Stand-In's layout; refuses anything else."""
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist.", "Give Stand-In's LoRA file, e.g. Stand-In_wan2.1_T2V_14B.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not a torch checkpoint
        raise CorruptFileError(
            f"{path} is not a torch checkpoint ({type(error).__name__}: {error}).",
            "Give Stand-In's released .ckpt file as downloaded.",
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise CorruptFileError(f"{path} holds no weights.", "Give Stand-In's released .ckpt file as downloaded.")
    weights, foreign = {}, []
    for key, value in state.items():
        match = KEY.match(key)
        if match is None:
            foreign.append(key)
        else:
            weights[(int(match[1]), match[2], match[3])] = value
    if foreign:
        raise CorruptFileError(
            f"{path} is not in Stand-In's LoRA layout: keys such as {foreign[:3]} are not "
            "blocks.<i>.self_attn.<q|k|v>_loras.<down|up>.weight.",
            "Give Stand-In's LoRA file (convert --from standin reads only that layout).",
        )
    blocks = sorted({block for block, _, _ in weights})
    absent = [
        f"blocks.{b}.self_attn.{p}_loras.{w}.weight"
        for b in range(blocks[-1] + 1)
        for p in "qkv"
        for w in ("down", "up")
        if (b, p, w) not in weights
    ]
    if absent:
        raise CorruptFileError(f"{path} lacks {absent[:3]}.", "Give the complete file as downloaded.")
    return weights


@register_format("standin")
class StandInLoraFormat:
    """Read Stand-In's released LoRA file (the reference tokens' q/k/v LoRA of every Wan block)."""

    def read(self, path: Path) -> ConvertedModel:
        weights = read_standin_lora(Path(path))
        ranks = {tuple(value.shape) for (_, _, which), value in weights.items() if which == "down"}
        if len(ranks) != 1:
            raise CorruptFileError(
                f"{path}: the LoRA down weights have several shapes {sorted(ranks)}; one rank and width expected.",
                "Give the complete file as downloaded.",
            )
        (rank, _), last = ranks.pop(), max(block for block, _, _ in weights)
        state_dict = {
            f"plan.injectors.{LABEL}.lora.{block}_{projection}.{which}.weight": value.float()
            for (block, projection, which), value in weights.items()
            if not (block == last and projection == "q")
        }
        injector = {
            "name": "standin.reference",
            "rank": rank,
            "alpha": rank,  # Stand-In's LoRA has no scaling
            "positions": {"frame": -1, "height_offset": "after", "width_offset": "after"},
            "timestep": 0,
            "attention": "reference_isolated",
            "kv_cache": True,
        }
        notes = [
            f"{path}: the last block's q LoRA is left out (the reference tokens leave after that block's attention, "
            "so it never changes the output).",
            "The backbone's weights are not in Stand-In's file: they come from backbone.pretrained (Stand-In's "
            "released LoRA is for Wan2.1-T2V-14B) or, without it, from the backbone config (random).",
        ]
        return ConvertedModel("standin", {}, {LABEL: injector}, state_dict, notes, adapter_only=True)
