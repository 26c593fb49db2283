"""The generic diffusers denoising schedule: it hands `generator=` only to schedulers whose step takes one."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from idvid.backbones.base import DiffusersSchedule

SCHEDULERS = {
    "unipc": lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    "flow_match_euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "euler_ancestral": lambda: EulerAncestralDiscreteScheduler(),  # stochastic: its step draws from the generator
}


def run(schedule: DiffusersSchedule, seed: int) -> torch.Tensor:
    latents = schedule.prepare_initial_noise(torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(0)))
    generator = torch.Generator().manual_seed(seed)
    for i, t in enumerate(schedule.timesteps):
        prediction = 0.5 * schedule.scale_model_input(latents, t)
        latents = schedule.step(prediction, i, latents, generator=generator)
    return latents


@pytest.mark.parametrize("name", ["unipc", "flow_match_euler"])
def test_schedulers_whose_step_takes_no_generator_or_ignores_it_run_and_are_deterministic(name):
    first = run(DiffusersSchedule(SCHEDULERS[name](), 4), seed=1)
    assert first.shape == (1, 2, 4, 3, 3) and bool(first.isfinite().all())
    torch.testing.assert_close(run(DiffusersSchedule(SCHEDULERS[name](), 4), seed=2), first, rtol=0, atol=0)


def test_a_stochastic_scheduler_still_receives_the_generator():
    first = run(DiffusersSchedule(SCHEDULERS["euler_ancestral"](), 4), seed=1)
    again = run(DiffusersSchedule(SCHEDULERS["euler_ancestral"](), 4), seed=1)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not torch.equal(run(DiffusersSchedule(SCHEDULERS["euler_ancestral"](), 4), seed=2), first)
