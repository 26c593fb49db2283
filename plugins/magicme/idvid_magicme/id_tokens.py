"""Magic-Me's extended ID tokens: K new text tokens whose embedding rows are learned for one person.

``magicme.id_tokens`` is a ``text_tokens`` injector (textual inversion, Magic-Me's ID module): it adds
``<id_0> ... <id_{K-1}>`` to the backbone's tokenizer, makes the placeholder ``<id>`` in every caption
and prompt expand to them, and owns their K embedding rows. The text encoder reads its own table
for every other id, so only those rows train and the loaded table stays bit-identical.

The rows export to a small safetensors file (``save_id_tokens``; tensor ``vectors`` [K, D], the token
strings and the placeholder in its metadata) that ``magicme.id_tokens`` loads with ``file=PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from idvid.errors import ConfigError, MissingFileError
from idvid.injection import TextTokenInjector
from idvid.registry import register_format, register_injector


class TableWithLearnedRows(nn.Module):
    """The text encoder's token-embedding table, with the rows of ``token_ids`` read from their owner.

    The owner (the injector) holds the learned rows; they are not registered here, so the state dict
    has them once (under the injector) and the table's own keys only gain a ``table.`` prefix.
    """

    def __init__(self, table: nn.Module, token_ids: list[int], owner: "ExtendedIdTokens"):
        super().__init__()
        self.table = table
        self.register_buffer("token_ids", torch.tensor(token_ids), persistent=False)  # from the tokenizer
        object.__setattr__(self, "_owner", owner)  # a plain reference: not a submodule

    @property
    def weight(self) -> torch.Tensor:  # what transformers reads for the embedding's dtype and width
        return self.table.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # New ids may pass the end of the table: look those up anywhere, then take the learned row.
        rows = self.table(input_ids.clamp(max=self.table.num_embeddings - 1))
        match = input_ids.unsqueeze(-1) == self.token_ids.to(input_ids.device)  # [B, L, K]
        vectors = self._owner.vectors.to(rows.dtype)
        learned = torch.einsum("blk,kd->bld", match.to(rows.dtype), vectors)
        return torch.where(match.any(-1, keepdim=True), learned, rows)


@register_injector("magicme.id_tokens")
class ExtendedIdTokens(TextTokenInjector):
    """K learned ID tokens named in prompts by ``placeholder`` (Magic-Me's extended ID tokens).

    ``init_text``: the new rows start at the mean embedding of its tokens (a word the model knows for
    the subject, e.g. "person"); ``file``: start from an exported ID-token file instead.
    """

    def __init__(
        self,
        backbone,
        num_tokens: int = 4,
        placeholder: str = "<id>",
        token_prefix: str = "<id_",
        init_text: str = "person",
        file: str | None = None,
    ):
        super().__init__(backbone)
        if not isinstance(num_tokens, int) or num_tokens < 1:
            raise ConfigError(
                f"magicme.id_tokens: num_tokens={num_tokens!r} must be a positive integer.",
                "Magic-Me learns a few tokens per identity (e.g. num_tokens=4).",
            )
        self.placeholder, self.init_text = placeholder, init_text
        self.tokens = [f"{token_prefix}{k}>" for k in range(num_tokens)]
        self.vectors = nn.Parameter(torch.zeros(num_tokens, backbone.text_hidden_size))
        self.from_file = file is not None
        if file is not None:
            tokens, placeholder_in_file, vectors = read_id_tokens(file, backbone.text_hidden_size)
            if len(tokens) != num_tokens:
                raise ConfigError(
                    f"ID-token file {file} holds {len(tokens)} tokens; magicme.id_tokens has num_tokens={num_tokens}.",
                    f"Set injectors.<label>.num_tokens={len(tokens)}.",
                )
            self.tokens, self.placeholder = tokens, placeholder_in_file
            with torch.no_grad():
                self.vectors.copy_(vectors)

    def attach(self, backbone) -> None:
        table = backbone.text_token_embeddings
        if table.weight.shape[1] != self.vectors.shape[1]:
            raise ConfigError(
                f"magicme.id_tokens: the text encoder's token embeddings are {table.weight.shape[1]} wide, the "
                f"ID tokens {self.vectors.shape[1]}.",
                "This backbone's text encoder embeds tokens at another width than its output; the ID tokens "
                "need a text encoder whose embedding width is the BackboneInfo.text_hidden_size.",
            )
        token_ids = backbone.add_text_tokens(self.tokens, placeholder=self.placeholder)
        if not self.from_file:  # start where a word the model knows for the subject sits
            with torch.no_grad():
                self.vectors.copy_(self._mean_embedding(backbone, table).expand_as(self.vectors))
        backbone.set_text_token_embeddings(TableWithLearnedRows(table, token_ids, self))

    def _mean_embedding(self, backbone, table: nn.Module) -> torch.Tensor:
        ids = backbone.tokenizer(self.init_text, add_special_tokens=False).input_ids
        unknown = backbone.tokenizer.unk_token_id
        if not ids or (unknown is not None and unknown in ids):
            raise ConfigError(
                f"magicme.id_tokens: init_text={self.init_text!r} has words the tokenizer does not know.",
                "Give a word of the text encoder's vocabulary for the subject (e.g. init_text=person).",
            )
        return table.weight[torch.tensor(ids, device=table.weight.device)].float().mean(0)


# ------------------------------------------------------------------------- the ID-token file
def save_id_tokens(injector: ExtendedIdTokens, path: str | Path) -> Path:
    """Write the injector's tokens (strings, placeholder) and rows ``[K, D]`` as one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"tokens": json.dumps(injector.tokens), "placeholder": injector.placeholder}
    save_file({"vectors": injector.vectors.detach().float().cpu().contiguous()}, str(path), metadata=metadata)
    return path


def read_id_tokens(path: str | Path, width: int) -> tuple[list[str], str, torch.Tensor]:
    """(tokens, placeholder, vectors ``[K, D]``) of an ID-token file, refused when D is not ``width``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"ID-token file not found: {path}.",
            "Export one from a trained checkpoint: python -m idvid export CKPT --to magicme-id-tokens OUT/.",
        )
    with safe_open(str(path), framework="pt") as opened:
        metadata = opened.metadata() or {}
        if "vectors" not in opened.keys() or "tokens" not in metadata:
            raise ConfigError(
                f"{path} is not an ID-token file (it needs tensor 'vectors' and metadata 'tokens').",
                "Export one with: python -m idvid export CKPT --to magicme-id-tokens OUT/.",
            )
        vectors = opened.get_tensor("vectors")
    if vectors.shape[1] != width:
        raise ConfigError(
            f"ID-token file {path} was learned for a text encoder {vectors.shape[1]} wide; this backbone's is "
            f"{width} wide.",
            "ID tokens only fit the text encoder they were learned with: use the backbone they were trained on, "
            "or learn new tokens with experiment=magicme_id.",
        )
    return json.loads(metadata["tokens"]), metadata.get("placeholder", "<id>"), vectors


@register_format("magicme-id-tokens")
class IdTokensFormat:
    """``export CKPT --to magicme-id-tokens OUT/``: each ID-token injector as ``OUT/<label>.safetensors``.

    Reading one: the injector's ``file=`` option when training, ``sample CKPT --load magicme-id-tokens=FILE``
    (``load_into``) to sample any checkpoint of the same text encoder with them.
    """

    def load_into(self, module: Any, path: Path) -> None:
        """Give ``module`` the file's ID tokens: new rows for a model without them, else its own rows replaced."""
        backbone = module.backbone
        tokens, placeholder, vectors = read_id_tokens(path, backbone.info.text_hidden_size)
        present = {label: i for label, i in module.plan.injectors.items() if isinstance(i, ExtendedIdTokens)}
        same = [i for i in present.values() if i.tokens == tokens]
        if same:  # e.g. a magicme_id checkpoint sampled with the tokens of another run
            with torch.no_grad():
                same[0].vectors.copy_(vectors)
            backbone.text_placeholders.pop(same[0].placeholder, None)
            same[0].placeholder = placeholder
            backbone.text_placeholders[placeholder] = " ".join(tokens)
            return
        if present:
            label, injector = next(iter(present.items()))
            raise ConfigError(
                f"{path} holds ID tokens {tokens}; this checkpoint already has others ({label}: {injector.tokens}).",
                "Load a file exported from a run with the same token strings, or sample a checkpoint without ID "
                "tokens (one set of ID tokens per model).",
            )
        injector = ExtendedIdTokens(backbone.info, num_tokens=len(tokens), file=str(path))
        injector.to(backbone.text_token_embeddings.weight.device)
        injector.attach(backbone)
        module.plan.injectors[path.stem if path.stem not in module.plan.injectors else "id_tokens_loaded"] = injector

    def write(self, module: Any, out: Path) -> None:
        found = {label: i for label, i in module.plan.injectors.items() if isinstance(i, ExtendedIdTokens)}
        if not found:
            raise ConfigError(
                "This checkpoint has no magicme.id_tokens injector, so there are no ID tokens to export.",
                "Export a checkpoint trained with experiment=magicme_id.",
            )
        for label, injector in found.items():
            save_id_tokens(injector, Path(out) / f"{label}.safetensors")


__all__ = ["ExtendedIdTokens", "IdTokensFormat", "TableWithLearnedRows", "read_id_tokens", "save_id_tokens"]
