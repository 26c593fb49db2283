"""Denoising loop shared by validation sampling and the `sample` verb.

Classifier-free guidance is text-only, as in ConsisID's pipeline: identity
conditions go to both branches. Injectors' timestep-independent work (e.g. the
identity tokens of a Q-Former) is prepared once per video, not once per step; so are
the per-block keys and values of a static reference (site ``sequence_concat`` with
``kv_cache``), shared by every step and both guidance branches.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from idvid.conditioning.base import repeat_batch
from idvid.errors import ConfigError
from idvid.injection.plan import InjectionPlan
from idvid.randomness import BatchRandom
from idvid.sampling.noise_priors import GaussianNoise, initial_noise


@torch.no_grad()
def sample_latents(
    backbone,
    plan: InjectionPlan,
    conditions: Mapping[str, Any],
    text_embeddings: torch.Tensor,
    negative_text_embeddings: torch.Tensor,
    latent_shape: tuple[int, int, int, int, int],
    num_inference_steps: int = 50,
    guidance_scale: float = 6.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    noise_prior: Any = None,
    start_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    use_reference_cache: bool = True,
) -> torch.Tensor:
    """Return denoised latents ``[B, f, C, h, w]`` with the backbone's own denoising schedule.

    ``noise_prior`` (``idvid.sampling.noise_priors``; default: Gaussian) draws the initial noise.
    ``start_latents`` (clean latents of ``latent_shape``) makes it a partial denoising (SDEdit): they are
    noised to the schedule's step at ``strength`` in [0, 1] and only the remaining steps run, so
    ``strength=1`` denoises from (almost) pure noise and ``strength=0`` returns ``start_latents``.
    ``use_reference_cache=False`` recomputes a cacheable reference at every step (the cache's reference).
    """
    device = text_embeddings.device
    schedule = backbone.sampling_schedule(num_inference_steps, device)  # fresh: holds this run's solver state
    first_step = first_step_at_strength(len(schedule.timesteps), strength) if start_latents is not None else 0
    if start_latents is not None and first_step == len(schedule.timesteps):
        return start_latents.to(device, text_embeddings.dtype)

    noise = initial_noise(noise_prior or GaussianNoise(), latent_shape, generator)
    latents = noise.to(device, text_embeddings.dtype)
    if start_latents is None:
        latents = schedule.prepare_initial_noise(latents)
    else:
        latents = schedule.noise_to_step(start_latents.to(latents), latents, first_step)

    use_cfg = guidance_scale > 1.0
    branches = 2 if use_cfg else 1
    branch_conditions = {k: repeat_batch(v, branches) for k, v in conditions.items()}
    text = torch.cat([negative_text_embeddings, text_embeddings]) if use_cfg else text_embeddings
    random = BatchRandom(generator if generator is not None else torch.default_generator)
    injection = plan.prepare(branch_conditions, random)  # once per video
    reference = plan.sequence_injector
    if reference is not None and reference.kv_cache and use_reference_cache:
        injection = backbone.cache_reference(injection, (branches * latent_shape[0], *latent_shape[1:]))
    extra_latents = plan.concat_latents(branch_conditions, latents.repeat(branches, 1, 1, 1, 1))

    steps = range(first_step, len(schedule.timesteps))
    for i in tqdm(steps, desc="sampling", disable=not progress):
        t = schedule.timesteps[i]
        model_input = latents.repeat(branches, 1, 1, 1, 1)
        model_input = schedule.scale_model_input(model_input, t)
        if extra_latents is not None:
            model_input = torch.cat([model_input, extra_latents], dim=2)
        prediction = backbone(model_input, t.expand(model_input.shape[0]), text, injection).float()
        if use_cfg:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance_scale * (cond - uncond)
        latents = schedule.step(prediction, i, latents, generator=generator)
        latents = latents.to(text_embeddings.dtype)
    return latents


def first_step_at_strength(num_steps: int, strength: float) -> int:
    """The step a partial denoising of ``strength`` in [0, 1] starts at: the last ``strength`` share of the steps."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(
            f"strength={strength} is not in [0, 1].",
            "It is the share of the denoising steps re-run: 0 keeps the input, 1 re-generates it (e.g. 0.3).",
        )
    return num_steps - min(num_steps, round(num_steps * strength))
