"""Noise priors: the initial noise a sampling run starts from.

A noise prior is a registered class built from config options (``noise_prior.name`` plus its options);
its instance is called ``prior(shape, generator=...)`` with the kit's latent layout ``[B, F, C, H, W]``
(batch, latent frames, channels, height, width) and returns float32 noise of that shape on the CPU,
drawn only from ``generator`` (so a seeded run is reproducible). The backbone's schedule then scales it
(``prepare_initial_noise``). The core's ``gaussian`` is i.i.d. standard normal noise, the default.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from idvid.errors import ConfigError
from idvid.registry import PluginKind, build, register_noise_prior

DEFAULT_NOISE_PRIOR = {"name": "gaussian"}


@register_noise_prior("gaussian")
class GaussianNoise:
    """Independent standard normal noise for every latent element."""

    def __call__(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32)


def build_noise_prior(config: Mapping[str, Any] | str | None) -> Any:
    """The prior of a config node ``{name: <registered noise prior>, ...options}`` (or just its name)."""
    if config is None:
        config = DEFAULT_NOISE_PRIOR
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, Mapping) or "name" not in config:
        raise ConfigError(
            f"noise_prior={config!r} names no noise prior.",
            "Give noise_prior=<registered noise prior> (e.g. gaussian) and its options as noise_prior.<option>=...; "
            "`python -m idvid plugins` lists the registered ones.",
        )
    options = dict(config)
    return build(PluginKind.NOISE_PRIOR, options.pop("name"), **options)


def initial_noise(prior: Any, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Call ``prior`` and refuse a result of the wrong shape, naming the prior."""
    noise = prior(tuple(shape), generator=generator)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != tuple(shape):
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(
            f"Noise prior {type(prior).__name__} returned {got} for shape {tuple(shape)}; a noise prior must "
            f"return a tensor of exactly the shape it is given ([B, F, C, H, W])."
        )
    return noise.float()


__all__ = ["DEFAULT_NOISE_PRIOR", "GaussianNoise", "build_noise_prior", "initial_noise"]
