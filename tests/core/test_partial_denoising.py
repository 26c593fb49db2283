"""Partial denoising (SDEdit): generate(init_video=..., strength=...) through each family's noise_to_step."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch

from idvid.errors import ConfigError
from idvid.sampling.sampler import first_step_at_strength

from ..backbones.test_backbone_contract import TINY_BACKBONES
from ..conftest import compose_config


@pytest.fixture(scope="module", params=[tiny.config for tiny in TINY_BACKBONES])
def module(request):
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=baseline", f"backbone={request.param}"]).model).eval()


def _video(frames=9, size=32):
    return torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_strength_zero_is_the_vae_round_trip(module):
    video = _video()
    refined = module.generate({"caption": ["a person"]}, 9, 32, 32, num_inference_steps=4, init_video=video, strength=0)
    assert torch.equal(refined, module.backbone.decode_latents(module.backbone.encode_video(video)))


def test_strength_runs_that_share_of_the_schedule_from_the_noised_input(module):
    calls = []
    hook = module.backbone.register_forward_hook(lambda _m, args, _out: calls.append(float(args[1][0])))
    try:
        full_steps = module.backbone.sampling_schedule(4, "cpu").timesteps.tolist()
        for strength, expected in [(0.5, full_steps[2:]), (1.0, full_steps)]:
            calls.clear()
            out = module.generate(
                {"caption": ["a person"]}, 9, 32, 32, num_inference_steps=4, init_video=_video(), strength=strength
            )
            assert out.shape == (1, 9, 3, 32, 32) and torch.isfinite(out).all()
            assert calls == pytest.approx(expected)  # the last steps of the same schedule, in order
    finally:
        hook.remove()


def test_noise_to_step_is_the_forward_process_at_that_step(module):
    backbone = module.backbone
    clean = torch.randn(2, 3, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 3, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    schedule = backbone.sampling_schedule(4, "cpu")
    noised_late = schedule.noise_to_step(clean, noise, 3)
    noised_early = backbone.sampling_schedule(4, "cpu").noise_to_step(clean, noise, 0)
    # later steps are closer to the clean latents, and the noise is the given one (same inputs, same output)
    assert (noised_late - clean).norm() < (noised_early - clean).norm()
    assert torch.equal(noised_late, backbone.sampling_schedule(4, "cpu").noise_to_step(clean, noise, 3))


def test_strength_outside_zero_one_is_refused():
    assert first_step_at_strength(10, 0.3) == 7 and first_step_at_strength(10, 0) == 10
    with pytest.raises(ConfigError, match=r"strength=1.5 is not in \[0, 1\]"):
        first_step_at_strength(10, 1.5)


def test_a_weight_free_codec_backbone_refines_too():
    """The toy configuration's codec has statistics but no weights: SDEdit still encodes through it."""
    L.seed_everything(0)
    cfg = compose_config(["experiment=baseline", "backbone=cogvideox_toy", "data=demo", "data.num_frames=5"])
    module = hydra.utils.instantiate(cfg.model).eval()
    video = _video(frames=3, size=64)
    refined = module.generate({"caption": ["a person"]}, 3, 64, 64, num_inference_steps=4, init_video=video, strength=0)
    torch.testing.assert_close(refined, video, atol=1e-5, rtol=0)  # the codec round trip is exact
