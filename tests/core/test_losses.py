"""The generic training loss: a per-sample weighted squared error, averaged inside an optional mask."""

from __future__ import annotations

import pytest
import torch

from idvid.training.losses import WeightedMSELoss


def test_weighted_mse_math_and_mask():
    g = torch.Generator().manual_seed(1)
    prediction, target = (torch.randn(2, 3, 4, 2, 2, generator=g) for _ in range(2))
    weight = torch.tensor([10.0, 1.25])
    loss = WeightedMSELoss()(prediction, target, weight)
    expected = sum(w * ((prediction[i] - target[i]) ** 2).mean() for i, w in enumerate(weight.tolist())) / 2
    torch.testing.assert_close(loss, torch.as_tensor(expected), rtol=1e-5, atol=1e-6)

    mask = torch.zeros(2, 3, 1, 2, 2)
    mask[..., 0, 0] = 1
    corrupted = prediction.clone()
    corrupted[..., 1, 1] += 100  # outside the mask: must not matter
    masked = WeightedMSELoss()
    assert torch.equal(masked(prediction, target, weight, mask), masked(corrupted, target, weight, mask))
    inside = sum(w * ((prediction[i] - target[i])[..., 0, 0] ** 2).mean() for i, w in enumerate(weight.tolist())) / 2
    torch.testing.assert_close(masked(prediction, target, weight, mask), torch.as_tensor(inside), rtol=1e-5, atol=1e-6)
    assert masked(prediction, target, weight, torch.ones_like(mask)) == pytest.approx(loss.item(), rel=1e-6)
