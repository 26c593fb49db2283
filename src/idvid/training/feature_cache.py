"""On-disk caches of the deterministic encoder outputs of a training step.

What is cached, and why only this (ConsisID's recipe draws fresh randomness every step):

- **text embeddings**, per caption string: the text encoder is deterministic. Caption dropout
  (classifier-free guidance) only chooses *which* caption ("" or the real one) is encoded,
  and both are cached.
- **VAE posteriors** of the training videos, per (video file, frame indices, size): the mean and
  standard deviation of the latent distribution (``Backbone.encode_posterior``, before the family's
  latent normalisation). The latent itself is a fresh sample ``mean + std * noise`` drawn at every
  step from the step's generator and normalised by the backbone (``Backbone.latents_from_posterior``),
  exactly as without the cache.

- **conditions of deterministic conditioners** (those declaring ``deterministic_inputs``, e.g.
  ConsisID's identity features: CLIP on the clean reference image + the face embedding), per
  sample, keyed by the content of those inputs: the recipe still picks the reference (in-clip or
  cross-face) every step; each picked image's features are computed once.

Not cached: the reference-face and keypoint latents (the recipe adds Gaussian noise to the reference
*before* VAE encoding, a different input every step, and the VAE sample is drawn per step), and
every choice the recipe draws (cross-face, text drop, image-latent dropout, DropToken).

Keys: the model's fingerprint (its pretrained folder's files, or a hash of its weights when it has
none) + the input's fingerprint + the settings, so a changed model, video, caption or resolution
misses the cache instead of reading a stale entry. Entries are written to a temporary name and
renamed, so an interrupted run never leaves a half-written entry that a later run trusts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from idvid.atomic_files import write_atomic
from idvid.randomness import BatchRandom


def module_fingerprint(module: nn.Module, pretrained: str | None = None) -> str:
    """A short hash of a frozen model: its pretrained files' names, sizes and mtimes, else its weights."""
    digest = hashlib.sha256(type(module).__name__.encode())
    if pretrained:
        for path in sorted(Path(pretrained).expanduser().rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Text embeddings and VAE posteriors on disk under `root` (see the module docstring).

    `encode_text` / `encode_video` have the backbone's signatures and results; `hits` and `misses`
    count entries read and computed (tests and logs use them).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self._fingerprints: dict[int, str] = {}

    def _fingerprint(self, module: nn.Module, pretrained: str | None) -> str:
        if id(module) not in self._fingerprints:
            self._fingerprints[id(module)] = module_fingerprint(module, pretrained)
        return self._fingerprints[id(module)]

    def _entries(self, kind: str, keys: list[str], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """Cached values for `keys`; `compute(indices)` returns the missing ones, which are then stored."""
        paths = [self.root / kind / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt" for key in keys]
        values: list[Any] = [None] * len(keys)
        for i, path in enumerate(paths):
            try:
                values[i] = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):
                pass  # missing or unreadable: computed below
        missing = [i for i, value in enumerate(values) if value is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            for i, value in zip(missing, compute(missing)):
                values[i] = value
                _save_atomic(value, paths[i])
        return values

    def encode_text(self, backbone: Any, captions: list[str]) -> torch.Tensor:
        """`backbone.encode_text(captions)`, one cached embedding per caption."""
        model = self._fingerprint(backbone.text_encoder, backbone.pretrained)
        keys = [f"text|{model}|{caption}" for caption in captions]

        def compute(indices: list[int]) -> list[torch.Tensor]:
            with torch.no_grad():
                embeddings = backbone.encode_text([captions[i] for i in indices])
            return [e.detach().cpu().clone() for e in embeddings]

        device = next(backbone.text_encoder.parameters()).device
        return torch.stack(self._entries("text", keys, compute)).to(device)

    def encode_video(self, backbone: Any, batch: dict, random: BatchRandom) -> torch.Tensor:
        """`backbone.encode_video(batch["video"], random)`: cached posterior, fresh sample.

        Needs `batch["video_key"]` (the dataset's per-item video fingerprint and frame indices).
        """
        video = batch["video"]
        model = self._fingerprint(backbone.vae, backbone.pretrained)
        size = "x".join(str(s) for s in video.shape[1:])
        keys = [f"vae|{model}|{video_key}|{size}" for video_key in batch["video_key"]]

        def compute(indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            with torch.no_grad():
                mean, std = backbone.encode_posterior(video[indices])
            return [(m.cpu().clone(), s.cpu().clone()) for m, s in zip(mean, std)]

        entries = self._entries("vae", keys, compute)
        mean = torch.stack([m for m, _ in entries]).to(video.device)
        std = torch.stack([s for _, s in entries]).to(video.device)
        # The same draw, in the same order, and the same normalisation as backbone.encode_video.
        return backbone.latents_from_posterior(mean, std, random)

    def conditions(self, conditioner: nn.Module, batch: dict, backbone: Any, random: BatchRandom) -> dict[str, Any]:
        """`conditioner(batch, ...)` for a conditioner with `deterministic_inputs`, cached per sample.

        The key is the conditioner's fingerprint and the content of its deterministic inputs (e.g. the
        reference image), so whichever frame the recipe picked, the same image reads the same entry.
        """
        model = self._fingerprint(conditioner, conditioner.pretrained)
        names = conditioner.deterministic_inputs
        size = len(batch[names[0]])
        keys = []
        for i in range(size):
            digest = hashlib.sha256(f"{type(conditioner).__name__}|{model}".encode())
            for name in names:
                value = batch[name][i].detach().cpu().contiguous()
                digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
                digest.update(value.view(torch.uint8).numpy().tobytes())
            keys.append(digest.hexdigest())

        def compute(indices: list[int]) -> list[dict[str, Any]]:
            index = torch.tensor(indices)
            subset = {k: _take(v, index) for k, v in batch.items()}
            with torch.no_grad():
                produced = conditioner(subset, backbone, random)
            return [
                {k: _take(v, torch.tensor([j]), squeeze=True) for k, v in produced.items()} for j in range(len(indices))
            ]

        entries = self._entries("conditions", keys, compute)
        device = batch[names[0]].device
        return {name: _stack([e[name] for e in entries], device) for name in entries[0]}


def _take(value: Any, index: torch.Tensor, squeeze: bool = False) -> Any:
    """Rows `index` of a batch value (tensors, lists of tensors, lists of strings); one row unwrapped with squeeze."""
    if isinstance(value, torch.Tensor):
        rows = value[index.to(value.device)]
        return rows[0].detach().cpu().clone() if squeeze else rows
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return [_take(v, index, squeeze) for v in value]
    if isinstance(value, list):
        rows = [value[i] for i in index.tolist()]
        return rows[0] if squeeze else rows
    return value


def _stack(values: list[Any], device: torch.device) -> Any:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values).to(device)
    return [torch.stack([v[i] for v in values]).to(device) for i in range(len(values[0]))]


def _save_atomic(value: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(value, tmp))
