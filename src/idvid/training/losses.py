"""Diffusion losses. A loss maps the model's prediction to a scalar, optionally inside a mask."""

from __future__ import annotations

import torch
from torch import nn

from idvid.registry import register_loss


@register_loss("v_to_x0")
class VPredictionToX0Loss(nn.Module):
    """ConsisID / CogVideoX recipe: turn a v-prediction into an x0 estimate and weight by 1 / (1 - alpha_bar_t).

    ``x0_hat = sqrt(alpha_bar) * x_t - sqrt(1 - alpha_bar) * v``; the squared error to the clean
    latent is weighted per sample. With a ``mask`` (``[B, f, 1, h, w]`` in [0, 1]) the error is
    averaged over the masked elements only (dynamic mask loss).
    """

    def forward(
        self,
        prediction: torch.Tensor,
        clean_latents: torch.Tensor,
        noisy_latents: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        alpha_bar = alphas_cumprod.to(prediction.dtype).view(-1, 1, 1, 1, 1)
        x0_hat = alpha_bar.sqrt() * noisy_latents - (1 - alpha_bar).sqrt() * prediction
        weight = 1.0 / (1.0 - alpha_bar)
        error = weight * (x0_hat.float() - clean_latents.float()) ** 2
        if mask is None:
            return error.mean()
        mask = mask.expand_as(error).float()
        per_sample = (error * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
        return per_sample.mean()
