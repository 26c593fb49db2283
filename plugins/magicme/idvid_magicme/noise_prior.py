"""Magic-Me's 3D Gaussian noise prior: initial noise correlated across latent frames.

Video Custom Diffusion starts sampling from noise whose frames are correlated, which trades motion
for stability: at the same latent position, Cov(frame m, frame n) = gamma^|m-n| and every value is
N(0, 1). It is an AR(1) process along the frame axis,

    z_0 = eps_0,    z_f = gamma * z_{f-1} + sqrt(1 - gamma^2) * eps_f,    eps ~ N(0, I),

so no covariance matrix is ever built. Training-free: only sampling uses it.
"""

from __future__ import annotations

import math

import torch

from idvid.errors import ConfigError
from idvid.registry import register_noise_prior


@register_noise_prior("magicme.gaussian_3d")
class Gaussian3DNoise:
    """N(0, 1) noise ``[B, F, C, H, W]`` with correlation ``gamma^|m-n|`` between latent frames m and n."""

    def __init__(self, gamma: float = 0.1):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
            raise ConfigError(
                f"noise prior magicme.gaussian_3d: gamma={gamma!r} is not in (0, 1).",
                "gamma is the correlation of neighbouring latent frames: Magic-Me uses 0.05-0.15 (more is "
                "steadier, less moves more); for independent frames use the gaussian prior instead.",
            )
        self.gamma = float(gamma)

    def __call__(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        if len(shape) != 5:
            raise ValueError(f"magicme.gaussian_3d draws the latent layout [B, F, C, H, W]; got shape {tuple(shape)}.")
        eps = torch.randn(shape, generator=generator, dtype=torch.float32)
        innovation = math.sqrt(1.0 - self.gamma**2)  # keeps every frame's variance at 1
        frames = [eps[:, 0]]
        for f in range(1, shape[1]):
            frames.append(self.gamma * frames[-1] + innovation * eps[:, f])
        return torch.stack(frames, dim=1)


__all__ = ["Gaussian3DNoise"]
