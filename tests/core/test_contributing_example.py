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
