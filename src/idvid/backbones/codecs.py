"""Weight-free, exactly invertible latent codecs: a backbone part that stands in for the VAE at small scale.

A random tiny VAE decodes nothing recognisable, however well the transformer learns. A codec
here is a fixed linear map with an exact inverse, so every latent the transformer predicts
decodes to an image and ``decode(encode(x)) == x`` up to float error:

- ``haar``: ``levels`` rounds of the orthonormal 2D Haar transform applied to every channel
  (a wavelet packet): each round turns a 2x2 pixel block into its average (low band) and three
  differences (horizontal, vertical, diagonal detail). The channels are frequency bands, the
  split the method's low/high-frequency story is about.
- ``unshuffle``: ``levels`` rounds of pixel-unshuffle (space-to-depth), no mixing.

Either gives ``3 * 4**levels`` channels at ``1 / 2**levels`` of the size, one latent frame per
video frame. The latents are normalised per channel, ``(z - mean) / std``, with statistics
computed from the data (``codec_statistics``: deterministic, a pure function of the clips);
``statistics=None`` leaves them unnormalised. ``scale`` says which std divides:

- ``shared`` (default): one std for every channel, the root mean square of the per-channel stds. The
  bands keep their natural energies (the finest Haar band of a face is ~100x weaker than the average),
  so noise drowns fine detail first and diffusion goes coarse to fine, as it does in pixel space.
- ``per_channel``: each channel to unit variance (as Wan's VAE latents are). It amplifies the finest
  bands' detail ~100x and gives the coarse band, which carries what a picture looks like, only
  3/48 of the loss (one toy run: colour-block noise at step 100; see README, "Toy scale").

Both adapters (``cogvideox``, ``wan``) take ``codec: {kind, levels, statistics, scale}`` in their
backbone config in place of ``vae``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from idvid.atomic_files import write_json_atomic

log = logging.getLogger(__name__)

CODEC_KINDS = ("haar", "unshuffle")
SCALES = ("shared", "per_channel")

# Orthonormal 2x2 Haar basis over pixel_unshuffle's sub-pixel order (0,0), (0,1), (1,0), (1,1):
# average, horizontal detail, vertical detail, diagonal detail. Its own inverse is its transpose.
_HAAR = 0.5 * torch.tensor(
    [
        [1.0, 1.0, 1.0, 1.0],
        [1.0, -1.0, 1.0, -1.0],
        [1.0, 1.0, -1.0, -1.0],
        [1.0, -1.0, -1.0, 1.0],
    ]
)


class LatentCodec(nn.Module):
    """``[B, F, 3, H, W]`` in [-1, 1] <-> normalised latents ``[B, F, 3 * 4**levels, H / 2**levels, W / 2**levels]``."""

    temporal_compression = 1  # one latent frame per video frame

    def __init__(
        self,
        kind: str = "haar",
        levels: int = 2,
        statistics: dict[str, list[float]] | None = None,
        scale: str = "shared",
    ):
        super().__init__()
        if kind not in CODEC_KINDS:
            raise ValueError(f"backbone.codec.kind={kind!r} is not a codec; use one of {list(CODEC_KINDS)}.")
        if scale not in SCALES:
            raise ValueError(f"backbone.codec.scale={scale!r} is not a normalisation; use one of {list(SCALES)}.")
        if int(levels) < 1:
            raise ValueError(f"backbone.codec.levels={levels} must be >= 1 (each level halves height and width).")
        self.kind, self.levels, self.scale = kind, int(levels), scale
        channels = self.latent_channels
        mean, std = torch.zeros(channels), torch.ones(channels)
        if statistics is not None:
            mean, std = torch.tensor(statistics["mean"]), torch.tensor(statistics["std"])
            if mean.shape != (channels,) or std.shape != (channels,) or bool((std <= 0).any()):
                raise ValueError(
                    f"backbone.codec.statistics must hold {channels} means and {channels} positive stds for a "
                    f"{kind} codec of {levels} levels (got {tuple(mean.shape)} and {tuple(std.shape)}); compute "
                    "them with idvid.backbones.codecs.codec_statistics on your clips."
                )
            if scale == "shared":
                std = std.square().mean().sqrt().expand(channels).clone()
        # Buffers: saved with the backbone, fingerprinted by the feature cache like a VAE's weights.
        self.register_buffer("mean", mean.float().view(1, 1, -1, 1, 1))
        self.register_buffer("std", std.float().view(1, 1, -1, 1, 1))

    @property
    def latent_channels(self) -> int:
        return 3 * 4**self.levels

    @property
    def spatial_compression(self) -> int:
        return 2**self.levels

    def transform(self, video: torch.Tensor) -> torch.Tensor:
        """The raw (unnormalised) coefficients of ``[B, F, 3, H, W]``: ``[B, F, C, h, w]``."""
        batch, frames, _, height, width = video.shape
        step = self.spatial_compression
        if height % step or width % step:
            raise ValueError(
                f"a {self.kind} codec of {self.levels} levels needs heights and widths that are multiples of {step}; "
                f"got {height}x{width}."
            )
        x = video.flatten(0, 1)
        for _ in range(self.levels):
            x = F.pixel_unshuffle(x, 2)
            if self.kind == "haar":
                x = _mix(x, _HAAR.to(x))
        return x.unflatten(0, (batch, frames))

    def inverse(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``transform``'s exact inverse."""
        batch, frames = coefficients.shape[:2]
        x = coefficients.flatten(0, 1)
        for _ in range(self.levels):
            if self.kind == "haar":
                x = _mix(x, _HAAR.T.to(x))
            x = F.pixel_shuffle(x, 2)
        return x.unflatten(0, (batch, frames))

    def normalize(self, coefficients: torch.Tensor) -> torch.Tensor:
        return (coefficients - self.mean.to(coefficients)) / self.std.to(coefficients)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video -> normalised latents."""
        return self.normalize(self.transform(video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video (not clamped)."""
        return self.inverse(latents * self.std.to(latents) + self.mean.to(latents))


def _mix(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Apply ``basis`` [4, 4] to each group of 4 consecutive channels (pixel_unshuffle's sub-pixels)."""
    n, c, h, w = x.shape
    groups = x.view(n, c // 4, 4, h, w)
    return torch.einsum("ij,ngjhw->ngihw", basis, groups).reshape(n, c, h, w)


def build_codec(config: dict[str, Any]) -> LatentCodec:
    """A codec from a backbone config's ``codec`` node."""
    unknown = set(config) - {"kind", "levels", "statistics", "scale"}
    if unknown:
        raise ValueError(
            f"backbone.codec has unknown keys {sorted(unknown)}; it takes kind, levels, statistics, scale."
        )
    return LatentCodec(**config)


@torch.no_grad()
def codec_statistics(
    manifest: str | Path,
    kind: str,
    levels: int,
    num_frames: int,
    frame_stride: int,
    height: int,
    width: int,
    cache: bool = True,
) -> dict[str, list[float]]:
    """Per-channel mean and std of the codec's coefficients over every clip of ``manifest``.

    Deterministic: clips in manifest order, each read as the data set's fixed validation item (key = its
    index, no step-dependent draw), sums in float64. With ``cache``, kept as JSON next to the manifest
    (named after every argument), so later runs read it instead of decoding the clips again.
    """
    from idvid.data.dataset import IdentityVideoDataset

    manifest = Path(manifest)
    key = f"{manifest.stem}-{kind}{levels}-{num_frames}x{frame_stride}-{height}x{width}"
    use_cache, cache = cache, manifest.parent / "codec_statistics" / f"{key}.json"
    if use_cache and cache.is_file():
        return json.loads(cache.read_text())
    codec = LatentCodec(kind, levels)
    dataset = IdentityVideoDataset(manifest, num_frames, frame_stride, height, width, seed=0)
    total = torch.zeros(codec.latent_channels, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for index in range(len(dataset)):
        coefficients = codec.transform(dataset[index]["video"].unsqueeze(0)).double()
        total += coefficients.sum(dim=(0, 1, 3, 4))
        total_sq += coefficients.square().sum(dim=(0, 1, 3, 4))
        count += coefficients[:, :, 0].numel()
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    statistics = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    if not use_cache:
        return statistics
    cache.parent.mkdir(exist_ok=True)
    write_json_atomic(cache, statistics)
    log.info("codec statistics of %s (%d clips) written to %s", manifest, len(dataset), cache)
    return statistics
