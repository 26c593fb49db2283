"""Test-only injectors and inputs for exercising the site contract."""

from __future__ import annotations

import torch

from idvid.backbones.base import Backbone
from idvid.backbones.cogvideox import CogVideoXBackbone
from idvid.backbones.info import BackboneInfo
from idvid.injection import InjectionPlan, InputConcatInjector, TokenInjector
from idvid.randomness import BatchRandom

# The sizes of the tiny demo backbone, for building plugins without a backbone.
TINY_INFO = BackboneInfo(
    hidden_size=32,
    num_layers=4,
    latent_channels=16,
    text_hidden_size=32,
    vae_temporal_compression=4,
    vae_spatial_compression=8,
    patch_size=2,
    patch_size_t=1,
)


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


class PatternInjector(TokenInjector):
    """Adds a fixed random pattern (a constant shift would vanish in the LayerNorms that follow a site)."""

    consumes = ()

    def forward(self, block_index, hidden_states, prepared):
        generator = torch.Generator().manual_seed(block_index)
        pattern = torch.randn(hidden_states.shape, generator=generator, dtype=torch.float32)
        return pattern.to(hidden_states)


class LinearInjector(TokenInjector):
    """A trainable residual: exercises gradients through the sites."""

    consumes = ("signal",)

    def __init__(self, backbone, site, blocks="all"):
        super().__init__(backbone, site=site, blocks=blocks)
        self.proj = torch.nn.Linear(backbone.hidden_size, backbone.hidden_size)

    def prepare(self, conditions, random):
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


def backbone_inputs(backbone: Backbone, batch: int = 2):
    """Random transformer inputs of any backbone: latents of its default video size (with the input
    layer's channel count), timesteps ``[10, 700]`` and text embeddings of its encoder's shape."""
    generator = torch.Generator().manual_seed(1)
    _, frames, _, height, width = backbone.latent_shape(batch, *backbone.default_video_size)
    channels = backbone.input_layer.in_channels
    latents = torch.randn(batch, frames, channels, height, width, generator=generator)
    timestep = torch.tensor([10, 700][:batch])
    text_shape = backbone.encode_text([""] * batch).shape
    text = torch.randn(*text_shape, generator=generator)
    return latents, timestep, text


def run_backbone(backbone: Backbone, plan=None, conditions=None, inputs=None) -> torch.Tensor:
    """The backbone's forward on ``inputs`` (default: ``backbone_inputs``) with ``plan`` prepared on ``conditions``."""
    latents, timestep, text = inputs or backbone_inputs(backbone)
    injection = (plan or InjectionPlan({})).prepare(conditions or {}, BatchRandom(torch.Generator().manual_seed(0)))
    return backbone(latents, timestep, text, injection)
