"""Diffusion losses. A loss maps the prediction (in the target's space) to a scalar, optionally inside a mask."""

from __future__ import annotations

import torch
from torch import nn

from idvid.registry import register_loss


@register_loss("weighted_mse")
class WeightedMSELoss(nn.Module):
    """The squared error to the backbone's target, weighted per sample, averaged (inside ``mask``).

    The backbone decides the space and the weight (``Backbone.add_training_noise``,
    ``Backbone.to_target_space``): e.g. a v-prediction's x0 estimate against the clean latent, weighted
    by 1 / (1 - alpha_bar_t) (ConsisID's recipe), or a flow-matching velocity with weight 1. With a
    ``mask`` (``[B, f, 1, h, w]`` in [0, 1]) each sample's error is averaged over the masked elements
    only (dynamic mask loss).
    """

    def forward(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weight = weight.view(-1, *([1] * (prediction.dim() - 1)))
        error = weight * (prediction.float() - target.float()) ** 2
        if mask is None:
            return error.mean()
        mask = mask.expand_as(error).float()
        per_sample = (error * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
        return per_sample.mean()
