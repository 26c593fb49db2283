"""experiment=lynx trains 2 steps and samples on both tiny backbones; only the adapters change."""

from __future__ import annotations

import math

import hydra
import lightning as L
import pytest
import torch

from idvid.interop import load_module
from idvid.verbs.fit import fit
from tests.conftest import compose_config


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["cogvideox_tiny", "wan_tiny"])
def test_lynx_fits_two_steps_samples_and_trains_only_the_adapters(tmp_path, backbone):
    overrides = ["experiment=lynx", f"backbone={backbone}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    overrides += ["callbacks.checkpoint.every_n_train_steps=2", "model.validation.num_inference_steps=2"]
    overrides += ["model.validation.loss_quantiles=[0.5]", "model.validation.frequency=null"]
    cfg = compose_config(overrides, run_dir=tmp_path)
    loss = fit(cfg)
    assert loss is not None and math.isfinite(loss)
    assert list((tmp_path / "samples").glob("step000002_*.mp4"))  # the validation sample went through `generate`

    trained = load_module(tmp_path / "checkpoints" / "last.ckpt")
    L.seed_everything(0)  # fit builds its model right after seeding with the config's seed
    fresh = hydra.utils.instantiate(compose_config(["experiment=lynx", f"backbone={backbone}"]).model)
    fresh_state, trained_state = fresh.state_dict(), trained.state_dict()
    changed = {key for key in trained_state if not torch.equal(trained_state[key], fresh_state[key])}
    assert changed and all(key.startswith("plan.injectors.") for key in changed)
    assert any(".to_out." in key for key in changed if key.startswith("plan.injectors.id_adapter."))
    assert any(".to_out." in key for key in changed if key.startswith("plan.injectors.ref_adapter."))
