"""Test-only injectors and inputs for exercising the site contract."""

from __future__ import annotations

import torch

from idvid.backbones.cogvideox import CogVideoXBackbone
from idvid.injection import InputConcatInjector, TokenInjector


class ConstantInjector(TokenInjector):
    """Adds ``value`` everywhere; value 0 must be a no-op at any site. Records where it was called."""

    consumes = ()

    def __init__(self, backbone, site, blocks="all", value: float = 0.0):
        super().__init__(backbone, site=site, blocks=blocks)
        self.value = value
        self.calls: list[int] = []

    def forward(self, block_index, hidden_states, prepared):
        self.calls.append(block_index)
        return torch.full_like(hidden_states, self.value)


class LinearInjector(TokenInjector):
    """A trainable residual: exercises gradients through the sites."""

    consumes = ("signal",)

    def __init__(self, backbone, site, blocks="all"):
        super().__init__(backbone, site=site, blocks=blocks)
        self.proj = torch.nn.Linear(backbone.hidden_size, backbone.hidden_size)

    def prepare(self, conditions):
        return conditions["signal"]

    def forward(self, block_index, hidden_states, prepared):
        return self.proj(hidden_states) * prepared.view(-1, 1, 1)


class ExtraChannels(InputConcatInjector):
    consumes = ("extra",)

    def __init__(self, backbone, channels: int):
        super().__init__(backbone, channels=channels)

    def concat_latents(self, conditions, noisy_latents):
        b, f, _, h, w = noisy_latents.shape
        return conditions["extra"][:, :, : self.channels].expand(b, f, self.channels, h, w)


def make_backbone(config: dict, **overrides) -> CogVideoXBackbone:
    torch.manual_seed(0)
    return CogVideoXBackbone(**{**config, **overrides}).eval()


def backbone_inputs(backbone: CogVideoXBackbone, batch: int = 2, frames: int = 3, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    channels = backbone.transformer.patch_embed.proj.in_channels
    latents = torch.randn(batch, frames, channels, size, size, generator=generator)
    timestep = torch.tensor([10, 700][:batch])
    text = torch.randn(
        batch, backbone.transformer.config.max_text_seq_length, backbone.info.text_hidden_size, generator=generator
    )
    return latents, timestep, text
