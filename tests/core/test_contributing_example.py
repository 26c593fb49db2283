"""The worked example in CONTRIBUTING.md is real code: run it as a third party would."""

from __future__ import annotations

import re

import hydra
import lightning as L
import torch

from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind

from ..conftest import REPO, compose_config

CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()


def _block(language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", CONTRIBUTING, flags=re.S)[index]


def test_worked_example_registers_trains_and_starts_as_a_no_op(tmp_path):
    namespace: dict = {}
    injectors = REGISTRIES[PluginKind.INJECTOR]
    injectors.get("consisid.global_face_latent")  # plugins loaded before the example registers
    exec(compile(_block("python"), "CONTRIBUTING.md", "exec"), namespace)
    try:
        # The example experiment file, found the way a user's own config folder would be.
        (tmp_path / "experiment").mkdir()
        (tmp_path / "experiment" / "my_identity_tokens.yaml").write_text(_block("yaml"))
        cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "experiment=my_identity_tokens", "recipe=none"])
        assert cfg.experiment_name == "my_identity_tokens"
        L.seed_everything(0)
        model = hydra.utils.instantiate(cfg.model)
        injector = model.plan.injectors["identity"]
        assert type(injector).__name__ == "IdentityTokens"
        assert injector.block_indices == [1, 3]

        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup()
        batch = next(iter(datamodule.train_dataloader()))
        loss = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
        # Zero-initialised output: the same loss as with the in-block path bypassed.
        model.plan.in_block_enabled = False
        bypassed = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
        model.plan.in_block_enabled = True
        torch.testing.assert_close(loss, bypassed, rtol=0, atol=0)
        loss.backward()
        assert all(out.weight.grad is not None and out.weight.grad.abs().sum() > 0 for out in injector.to_out)
    finally:
        injectors._entries.pop("my_lab.identity_tokens", None)


def test_worked_recipe_step_greys_the_reference_through_the_steps_random(tmp_path):
    namespace: dict = {}
    steps = REGISTRIES[PluginKind.RECIPE_STEP]
    steps.get("text_drop")  # plugins loaded before the example registers
    exec(compile(_block("python", 1), "CONTRIBUTING.md", "exec"), namespace)
    try:
        (tmp_path / "experiment").mkdir()
        (tmp_path / "experiment" / "grey_reference.yaml").write_text(_block("yaml", 1))
        cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "experiment=grey_reference"])
        L.seed_everything(0)
        model = hydra.utils.instantiate(cfg.model)
        assert list(model.recipe.steps) == ["grey", "text_drop"]
        assert type(model.recipe.steps["grey"]).__name__ == "GreyReference"

        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup()
        batch = next(iter(datamodule.train_dataloader()))
        always = namespace["GreyReference"](probability=1.0)
        grey = always.on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(0)))["ref_image"]
        assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
        assert not torch.equal(batch["ref_image"][:, 0], batch["ref_image"][:, 1])
        # The same generator state draws the same coins: resume and data-parallel runs stay exact.
        half = namespace["GreyReference"](probability=0.5)
        first, again = (
            half.on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(3)))["ref_image"] for _ in range(2)
        )
        assert torch.equal(first, again)
        assert torch.isfinite(model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"])
    finally:
        steps._entries.pop("my_lab.grey_reference", None)


def test_worked_noise_prior_is_what_sampling_starts_from():
    namespace: dict = {}
    priors = REGISTRIES[PluginKind.NOISE_PRIOR]
    priors.get("gaussian")
    exec(compile(_block("python", 2), "CONTRIBUTING.md", "exec"), namespace)
    try:
        prior = namespace["OffsetNoise"](strength=0.5)
        shape = (2, 3, 4, 8, 8)
        noise = prior(shape, generator=torch.Generator().manual_seed(0))
        assert noise.shape == shape
        assert torch.equal(noise, prior(shape, generator=torch.Generator().manual_seed(0)))
        bash = _block("bash", 1)
        assert "model.validation.noise_prior={name: my_lab.offset_noise, strength: 0.1}" in bash
        assert "--noise-prior my_lab.offset_noise --noise-prior-option strength=0.1" in bash

        L.seed_everything(0)
        model = hydra.utils.instantiate(
            compose_config(
                ["experiment=baseline", "model.validation.noise_prior={name: my_lab.offset_noise, strength: 0.1}"]
            ).model
        ).eval()
        batch = {"caption": ["a person"]}
        offset = model.generate(batch, 9, 32, 32, 2, seed=0, noise_prior=model.validation["noise_prior"])
        plain = model.generate(batch, 9, 32, 32, 2, seed=0)
        assert offset.shape == plain.shape and not torch.equal(offset, plain)
    finally:
        priors._entries.pop("my_lab.offset_noise", None)
