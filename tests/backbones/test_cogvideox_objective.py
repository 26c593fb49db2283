"""CogVideoX's side of the contract: v-prediction on DDPM alphas, the x0 loss, its DPM scheduler step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CogVideoXDPMScheduler

from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build

from ..core.helpers import make_backbone


def test_training_noise_is_ddpm_with_an_x0_target_weighted_by_one_over_one_minus_alpha_bar(backbone_config):
    backbone = make_backbone(backbone_config)
    clean = torch.randn(2, 3, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(4)
    noised = backbone.add_training_noise(clean, BatchRandom(generator))
    replay = BatchRandom(torch.Generator().manual_seed(4))  # the same draws, in the documented order
    timesteps = replay.randint(1000, 2)
    noise = replay.randn_like(clean)
    assert torch.equal(noised.timesteps, timesteps)
    alpha_bar = backbone.scheduler.alphas_cumprod[timesteps].float()
    for i, a in enumerate(alpha_bar.tolist()):
        torch.testing.assert_close(noised.noisy[i], math.sqrt(a) * clean[i] + math.sqrt(1 - a) * noise[i])
        assert noised.weight[i] == 1 / (1 - alpha_bar[i])
    assert torch.equal(noised.target, clean)

    v = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    x0 = backbone.to_target_space(v, noised)
    loss = build(PluginKind.LOSS, "weighted_mse")(x0, noised.target, noised.weight)
    expected = 0.0  # ConsisID's loss, written out: x0 estimate of the v-prediction, weight 1 / (1 - alpha_bar)
    for i, a in enumerate(alpha_bar.tolist()):
        x0_i = math.sqrt(a) * noised.noisy[i] - math.sqrt(1 - a) * v[i]
        expected += ((x0_i - clean[i]) ** 2).mean() / (1 - a) / 2
    torch.testing.assert_close(loss, torch.as_tensor(expected), rtol=1e-5, atol=1e-6)

    # The true v (sqrt(a) * noise - sqrt(1 - a) * x0) maps back to the clean latent exactly.
    a = alpha_bar.view(-1, 1, 1, 1, 1)
    true_v = a.sqrt() * noise - (1 - a).sqrt() * clean
    torch.testing.assert_close(backbone.to_target_space(true_v, noised), clean, rtol=1e-4, atol=1e-5)


def test_x0_prediction_with_a_uniform_weight_is_the_toy_objective(backbone_config):
    """``scheduler.prediction_type=sample`` + ``loss_weight=uniform`` (cogvideox_toy): the output is x0, weight 1,
    and the sampler's scheduler reads the output as x0 too."""
    config = {**backbone_config, "loss_weight": "uniform"}
    config["scheduler"] = {**backbone_config["scheduler"], "prediction_type": "sample"}
    backbone = make_backbone(config)
    clean = torch.randn(2, 3, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(4)))
    assert torch.equal(noised.weight, torch.ones(2))
    prediction = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(backbone.to_target_space(prediction, noised), prediction)
    schedule = backbone.sampling_schedule(4, "cpu")
    schedule.step(prediction[:1], 0, noised.noisy[:1])
    assert torch.equal(schedule.old_pred_original_sample, prediction[:1])  # read as the x0 estimate


def test_unknown_loss_weight_or_prediction_type_is_refused(backbone_config):
    with pytest.raises(ValueError, match="backbone.loss_weight='snr'"):
        make_backbone({**backbone_config, "loss_weight": "snr"})
    scheduler = {**backbone_config["scheduler"], "prediction_type": "epsilon"}
    with pytest.raises(ValueError, match="prediction_type='epsilon'.*use one of those"):
        make_backbone({**backbone_config, "scheduler": scheduler})


def test_t_fraction_is_the_rounded_timestep_of_the_schedule(backbone_config):
    backbone = make_backbone(backbone_config)
    clean = torch.zeros(2, 3, 16, 8, 8)
    for fraction, timestep in [(0.0, 0), (0.1, 100), (0.5, 500), (1.0, 999)]:
        noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)), fraction)
        assert noised.timesteps.tolist() == [timestep, timestep]


def test_schedule_steps_as_diffusers_cogvideox_dpm_loop(backbone_config):
    backbone = make_backbone(backbone_config)
    schedule = backbone.sampling_schedule(4, "cpu")
    reference = CogVideoXDPMScheduler.from_config(backbone.scheduler.config)
    reference.set_timesteps(4)
    assert torch.equal(schedule.timesteps, reference.timesteps)
    latents = ours = torch.randn(1, 3, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    old_pred_original_sample = None
    for i, t in enumerate(reference.timesteps):
        prediction = torch.randn(latents.shape, generator=torch.Generator().manual_seed(10 + i))
        previous = reference.timesteps[i - 1] if i > 0 else None
        latents, old_pred_original_sample = reference.step(
            prediction,
            old_pred_original_sample,
            t,
            previous,
            latents,
            generator=torch.Generator().manual_seed(i),
            return_dict=False,
        )
        ours = schedule.step(prediction, i, ours, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(ours, latents, rtol=0, atol=0)
