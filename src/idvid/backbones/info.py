"""What a backbone tells injectors and conditioners about its shape."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneInfo:
    hidden_size: int  # width of the video tokens in the blocks
    num_layers: int  # number of transformer blocks
    latent_channels: int  # channels of the VAE latent (before any input_concat widening)
    text_hidden_size: int  # width of the text encoder's output
    vae_temporal_compression: int
    vae_spatial_compression: int
