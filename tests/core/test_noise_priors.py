"""Noise priors: the core's gaussian is the sampler's old noise, and a registered prior is what sampling uses."""

from __future__ import annotations

import uuid

import hydra
import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException

from idvid.errors import ConfigError, UnknownNameError
from idvid.registry import REGISTRIES, PluginKind, register_noise_prior
from idvid.sampling.noise_priors import GaussianNoise, build_noise_prior
from idvid.verbs.sample import noise_prior_node

from ..conftest import compose_config

SHAPE = (2, 3, 16, 4, 4)  # [B, F, C, H, W]


def test_gaussian_is_torchs_standard_normal_from_the_generator():
    prior = build_noise_prior({"name": "gaussian"})
    assert isinstance(prior, GaussianNoise) and isinstance(build_noise_prior(None), GaussianNoise)
    expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    assert torch.equal(prior(SHAPE, generator=torch.Generator().manual_seed(7)), expected)


@pytest.fixture
def recording_prior():
    name = f"test_lab.prior_{uuid.uuid4().hex[:8]}"
    shapes = []

    @register_noise_prior(name)
    class ConstantNoise:
        def __init__(self, value: float = 0.0):
            self.value = value

        def __call__(self, shape, generator=None):
            shapes.append(tuple(shape))
            return torch.full(shape, self.value)

    yield name, shapes
    REGISTRIES[PluginKind.NOISE_PRIOR]._entries.pop(name, None)


@pytest.fixture(scope="module")
def baseline_model():
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=baseline"]).model).eval()


def generate(model, **kwargs):
    return model.generate({"caption": ["a person"]}, 9, 32, 32, num_inference_steps=2, seed=0, **kwargs)


def test_a_registered_prior_is_what_sampling_starts_from(baseline_model, recording_prior):
    name, shapes = recording_prior
    gaussian = generate(baseline_model)
    assert torch.equal(gaussian, generate(baseline_model, noise_prior={"name": "gaussian"}))
    zeros = generate(baseline_model, noise_prior={"name": name, "value": 0.0})
    ones = generate(baseline_model, noise_prior={"name": name, "value": 1.0})
    assert shapes == [baseline_model.backbone.latent_shape(1, 9, 32, 32)] * 2  # [B, F, C, H, W]
    assert not torch.equal(zeros, gaussian) and not torch.equal(zeros, ones)


def test_a_prior_returning_the_wrong_shape_is_named(baseline_model):
    name = f"test_lab.bad_{uuid.uuid4().hex[:8]}"
    register_noise_prior(name)(type("Bad", (), {"__call__": lambda self, shape, generator=None: torch.zeros(3)}))
    try:
        with pytest.raises(ValueError, match=r"Noise prior Bad returned \(3,\) for shape"):
            generate(baseline_model, noise_prior=name)
    finally:
        REGISTRIES[PluginKind.NOISE_PRIOR]._entries.pop(name, None)


def test_validation_prior_is_checked_at_start_up():
    with pytest.raises(InstantiationException, match="Unknown noise_prior plugin 'nope'.*gaussian") as error:
        hydra.utils.instantiate(compose_config(["experiment=baseline", "model.validation.noise_prior=nope"]).model)
    assert isinstance(error.value.__cause__, UnknownNameError)
    with pytest.raises(ConfigError, match="names no noise prior"):
        build_noise_prior({"gamma": 0.1})


def test_sample_command_line_options_make_the_prior_node():
    assert noise_prior_node("gaussian", []) == {"name": "gaussian"}
    assert noise_prior_node("my.prior", ["gamma=0.1", "mode=ar"]) == {"name": "my.prior", "gamma": 0.1, "mode": "ar"}
    with pytest.raises(ConfigError, match="--noise-prior-option 'gamma' is not KEY=VALUE"):
        noise_prior_node("my.prior", ["gamma"])
