"""Rectified-flow (flow-matching) training objective and denoising schedule, as Wan trains and samples.

Training: ``x_t = (1 - sigma) x_0 + sigma * noise`` and the network predicts the velocity
``noise - x_0`` (loss weight 1). ``sigma`` comes from ``u ~ U(lo, hi)`` through the timestep
shift Wan's scheduler configs carry (``flow_shift``), ``sigma = shift u / (1 + (shift - 1) u)``,
which spends more steps at high noise; the transformer is called with ``timestep = 1000 sigma``,
the same scale as the sampling schedulers' timesteps. ``(lo, hi)`` is the whole schedule for a
one-expert model and an expert's share of it for Wan 2.2's two experts.

Sampling uses the family's diffusers scheduler (UniPC or flow-match Euler) with that same shift.
"""

from __future__ import annotations

import torch

from idvid.backbones.base import DiffusersSchedule
from idvid.randomness import BatchRandom


def shift_sigma(u: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The timestep shift of Wan / SD3 schedulers: ``shift u / (1 + (shift - 1) u)``."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of ``shift_sigma``: the uniform draw ``u`` that lands on ``sigma``."""
    return sigma / (shift - (shift - 1) * sigma)


def draw_sigmas(
    random: BatchRandom,
    batch: int,
    shift: float,
    sigma_range: tuple[float, float] = (0.0, 1.0),
    t_fraction: float | None = None,
) -> torch.Tensor:
    """Per-sample noise levels ``[batch]`` inside ``sigma_range``: shifted-uniform, or fixed at ``t_fraction``.

    The draw always happens (one uniform per sample), so fixing ``t_fraction`` leaves every later draw
    of the step (noise, recipe coins) where it would be.
    """
    low, high = sigma_range
    u = random.rand(batch)
    if t_fraction is not None:
        return torch.full((batch,), low + float(t_fraction) * (high - low))
    u_low, u_high = unshift_sigma(low, shift), unshift_sigma(high, shift)
    return shift_sigma(u_low + u * (u_high - u_low), shift)


def flow_matching_noise(clean: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x_0 + sigma * noise`` with one sigma per sample (first axis)."""
    sigma = sigmas.to(clean).view(-1, *([1] * (clean.ndim - 1)))
    return (1 - sigma) * clean + sigma * noise


class FlowMatchingSchedule(DiffusersSchedule):
    """Wan's sampling schedulers (UniPC, flow-match Euler) as a kit denoising schedule.

    Unlike the generic schedule it starts the scheduler at step 0, as WanPipeline does.
    """

    def __init__(self, scheduler, num_inference_steps: int, device: torch.device | str | None = None):
        super().__init__(scheduler, num_inference_steps, device)
        self.scheduler.set_begin_index(0)

    def noise_to_step(self, clean: torch.Tensor, noise: torch.Tensor, step_index: int) -> torch.Tensor:
        # The flow at that step's sigma, (1 - sigma) x_0 + sigma noise, and the solver begins there.
        self.scheduler.set_begin_index(step_index)
        sigma = self.scheduler.sigmas[step_index].expand(clean.shape[0])
        return flow_matching_noise(clean, noise.to(clean), sigma)
