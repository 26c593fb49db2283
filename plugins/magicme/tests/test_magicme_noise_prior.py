"""magicme.gaussian_3d: its statistics, its errors, and that sample, validation and ablate start from it."""

from __future__ import annotations

import re
import types

import cv2
import hydra
import lightning as L
import pytest
import skimage.data
import torch
from idvid_magicme.noise_prior import Gaussian3DNoise

from idvid.errors import ConfigError
from idvid.interop import save_module
from idvid.registry import PluginKind, build
from idvid.sampling.noise_priors import GaussianNoise, build_noise_prior
from idvid.verbs import ablate
from idvid.verbs.sample import noise_prior_node, sample
from tests.conftest import compose_config

GAMMA = 0.6  # large enough that every lag's correlation is well above the sampling error


def test_marginals_are_standard_normal_and_frames_correlate_as_gamma_to_the_lag():
    frames = 6
    noise = Gaussian3DNoise(GAMMA)((4000, frames, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert noise.shape == (4000, frames, 2, 4, 4) and noise.dtype == torch.float32
    per_frame = noise.transpose(0, 1).reshape(frames, -1).double()  # 128k draws per frame
    assert torch.allclose(per_frame.mean(1), torch.zeros(frames, dtype=torch.double), atol=0.01)
    assert torch.allclose(per_frame.var(1), torch.ones(frames, dtype=torch.double), atol=0.02)
    lag = torch.arange(frames)
    expected = GAMMA ** (lag[:, None] - lag[None, :]).abs().double()
    # sampling error of a correlation over n = 128k draws is about (1 - r^2) / sqrt(n) < 0.003
    assert torch.allclose(torch.corrcoef(per_frame), expected, atol=0.01)


def test_same_generator_same_noise_and_it_is_not_the_iid_prior():
    shape = (2, 5, 3, 4, 4)
    first = Gaussian3DNoise(0.1)(shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, Gaussian3DNoise(0.1)(shape, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, Gaussian3DNoise(0.1)(shape, generator=torch.Generator().manual_seed(4)))
    iid = GaussianNoise()(shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[:, 0], iid[:, 0])  # frame 0 is the innovation itself ...
    assert not torch.equal(first[:, 1:], iid[:, 1:])  # ... later frames lean on the one before


def test_it_is_registered_and_built_from_config():
    prior = build(PluginKind.NOISE_PRIOR, "magicme.gaussian_3d", gamma=0.1)
    assert isinstance(prior, Gaussian3DNoise) and prior.gamma == 0.1
    assert isinstance(build_noise_prior({"name": "magicme.gaussian_3d", "gamma": 0.2}), Gaussian3DNoise)
    assert noise_prior_node("magicme.gaussian_3d", ["gamma=0.1"]) == {"name": "magicme.gaussian_3d", "gamma": 0.1}


@pytest.mark.parametrize("gamma", [0, 1, 1.5, -0.1, "0.1", True])
def test_gamma_outside_the_open_unit_interval_is_refused(gamma):
    expected = rf"(?s)gamma={re.escape(repr(gamma))} is not in \(0, 1\).*gaussian prior"
    with pytest.raises(ConfigError, match=expected):
        Gaussian3DNoise(gamma)


def test_a_shape_that_is_not_the_latent_layout_is_named():
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]; got shape \(2, 3\)"):
        Gaussian3DNoise(0.1)((2, 3))


# ------------------------------------------------------------------ where sampling takes it from
@pytest.fixture
def recorded_calls(monkeypatch):
    """Every shape magicme.gaussian_3d is called with, by any sampling path."""
    shapes = []
    draw = Gaussian3DNoise.__call__

    def recording(self, shape, generator=None):
        shapes.append((self.gamma, tuple(shape)))
        return draw(self, shape, generator)

    monkeypatch.setattr(Gaussian3DNoise, "__call__", recording)
    return shapes


@pytest.fixture(scope="module")
def baseline_checkpoint(tmp_path_factory):
    L.seed_everything(0)
    module = hydra.utils.instantiate(compose_config(["experiment=baseline"]).model)
    return save_module(module, tmp_path_factory.mktemp("ckpt") / "baseline.ckpt")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "astronaut_s0.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_sample_starts_from_it_and_the_default_stays_iid(baseline_checkpoint, astronaut, tmp_path, recorded_calls):
    prior = {"name": "magicme.gaussian_3d", "gamma": 0.1}
    sample(str(baseline_checkpoint), str(astronaut), "a person", str(tmp_path / "v.mp4"), steps=1, noise_prior=prior)
    assert len(recorded_calls) == 1 and recorded_calls[0][0] == 0.1
    sample(str(baseline_checkpoint), str(astronaut), "a person", str(tmp_path / "d.mp4"), steps=1)
    assert len(recorded_calls) == 1  # the default prior is the core's gaussian


def test_validation_samples_start_from_the_configured_prior(tmp_path, recorded_calls, monkeypatch):
    overrides = ["experiment=baseline", "model.validation.noise_prior={name: magicme.gaussian_3d, gamma: 0.15}"]
    module = hydra.utils.instantiate(compose_config(overrides).model).eval()
    monkeypatch.setattr("idvid.training.module.log_generated_videos", lambda *args: None)
    module._trainer = types.SimpleNamespace(default_root_dir=str(tmp_path), loggers=[], global_step=0)
    module._log_validation_sample({"video": torch.zeros(1, 9, 3, 32, 32), "caption": ["a person"]})
    assert recorded_calls == [(0.15, module.backbone.latent_shape(1, 9, 32, 32))]


def test_ablate_samples_its_evaluation_set_from_the_configured_prior(
    baseline_checkpoint, astronaut, tmp_path, recorded_calls
):
    folder = tmp_path / "magicme"
    (folder / "fit" / "checkpoints").mkdir(parents=True)
    (folder / "fit" / "checkpoints" / "last.ckpt").write_bytes(baseline_checkpoint.read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("astronaut_s0\ta person\n")
    spec = {"steps": 1, "guidance": 6.0, "frames": 9, "height": 32, "width": 32}
    spec["noise_prior"] = {"name": "magicme.gaussian_3d", "gamma": 0.05}
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(config_packages_compose([]), resolve=True)  # ablate's real config ...
    cfg["eval_set"].update(spec)  # ... with this evaluation set
    ablate.sample_eval_set(folder, astronaut.parent, prompts, ["astronaut_s0"], cfg)
    assert [gamma for gamma, _ in recorded_calls] == [0.05]
    assert (folder / "videos" / "astronaut_s0.mp4").is_file()
    # ablate's config takes the same node (eval_set.noise_prior=...)
    cfg = config_packages_compose(["eval_set.noise_prior={name: magicme.gaussian_3d, gamma: 0.05}"])
    assert dict(cfg.eval_set.noise_prior) == {"name": "magicme.gaussian_3d", "gamma": 0.05}


def config_packages_compose(overrides):
    from idvid import config_packages

    return config_packages.compose("ablate", overrides)
