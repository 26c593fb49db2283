"""What a backbone tells injectors and conditioners about its shape.

It lives in its own module, with no imports of the rest of idvid, because injectors and
conditioners (``idvid.injection``, ``idvid.conditioning``) need it and the backbone contract
(``idvid.backbones.base``, which re-exports it) needs them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneInfo:
    hidden_size: int  # width of the video tokens in the blocks
    num_layers: int  # number of transformer blocks
    latent_channels: int  # channels of the VAE latent (before any input_concat widening)
    text_hidden_size: int  # width of the text encoder's output
    vae_temporal_compression: int  # video frames per latent frame (after the first frame)
    vae_spatial_compression: int  # pixels per latent pixel, each side
    # The token grid: an injector that maps video tokens back to latent positions (or builds its own
    # tokens, e.g. reference tokens for sequence_concat) needs how many latent pixels one token covers.
    patch_size: int  # spatial patch, each side (CogVideoX 1.0 and Wan: 2)
    patch_size_t: int  # temporal patch (CogVideoX 1.0 and Wan: 1)
