"""The reference transformer: a trainable copy of the DiT over the reference (core ``reference_pass``,
``trainable: true``) whose features enter the last blocks through ``megactor.reference_attention``."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from idvid_megactor import ReferenceAttention

from idvid.errors import ConfigError
from idvid.injection.plan import NO_INJECTION
from idvid.randomness import BatchRandom
from tests.conftest import compose_config

BACKBONES = ["cogvideox_tiny", "wan_tiny"]


def stage_one(backbone: str, *overrides: str):
    cfg = compose_config(["experiment=megactor_stage1_visual", f"backbone={backbone}", *overrides])
    L.seed_everything(0)
    return hydra.utils.instantiate(cfg.model).eval(), cfg


@pytest.fixture(scope="module")
def demo_batch():
    datamodule = hydra.utils.instantiate(compose_config(["experiment=megactor_stage1_visual"]).data)
    datamodule.setup()
    return next(iter(datamodule.train_dataloader()))


@pytest.fixture(scope="module", params=BACKBONES)
def model(request):
    return stage_one(request.param)[0]


def predictions(model, batch, injection=None):
    """The denoiser's prediction for the batch at a fixed noise, with the plan's in-block injection or `injection`."""
    random = BatchRandom(torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditions = model.conditions_for(batch, random)
        clean = model.backbone.encode_video(batch["video"], random)
        noised = model.backbone.add_training_noise(clean, random, 0.5)
        model_input = torch.cat([noised.noisy, model.plan.concat_latents(conditions, noised.noisy)], dim=2)
        prepared = model.plan.prepare(conditions, random) if injection is None else injection
        return model.backbone(model_input, noised.timesteps, model.backbone.encode_text(batch["caption"]), prepared)


def test_the_reference_enters_the_last_blocks_and_starts_as_a_no_op(model, demo_batch):
    reference = model.plan.injectors["reference"]
    assert isinstance(reference, ReferenceAttention) and reference.block_indices == [2, 3]  # {last: 2} of 4 blocks
    assert model.conditioners["reference"].block_indices == [2, 3]
    # zero-initialised: exactly the model without the reference path (stage 1's only in-block injector)
    torch.testing.assert_close(
        predictions(model, demo_batch), predictions(model, demo_batch, NO_INJECTION), rtol=0, atol=0
    )
    nudged = [p for n, p in reference.named_parameters() if "to_out" in n]
    with torch.no_grad():
        for parameter in nudged:
            parameter.add_(0.1 * torch.randn_like(parameter))
    try:
        assert not torch.equal(predictions(model, demo_batch), predictions(model, demo_batch, NO_INJECTION))
    finally:
        with torch.no_grad():
            for parameter in nudged:
                parameter.zero_()


@pytest.mark.parametrize("trainable", [True, False])
def test_the_reference_transformer_trains_or_stays_frozen_by_config(trainable):
    model, _ = stage_one("cogvideox_tiny", f"conditioners.reference.trainable={str(trainable).lower()}")
    owned = [n for n, _ in model.named_parameters() if n.startswith("conditioners.reference.")]
    if not trainable:  # the denoiser's own transformer, under no_grad: nothing of its own to train or save
        assert owned == [] and model.conditioners["reference"].transformer is None
        return
    # its own copy of the DiT (same architecture, the denoiser's starting weights), trained with the plan
    copy, own = model.conditioners["reference"].transformer, model.backbone.transformer
    assert copy is not own and all(p.requires_grad for p in copy.parameters())
    for (name, a), (_, b) in zip(copy.named_parameters(), own.named_parameters()):
        assert torch.equal(a, b), name


def test_the_reference_transformer_runs_once_per_video_when_sampling(model, demo_batch):
    backbone, copy = model.backbone, model.conditioners["reference"].transformer
    layer = next(name for name, module in backbone.transformer.named_modules() if module is backbone.input_layer)
    calls = {"reference": 0, "denoiser": 0}
    hooks = [
        copy.get_submodule(layer).register_forward_hook(
            lambda *_: calls.__setitem__("reference", calls["reference"] + 1)
        ),
        backbone.input_layer.register_forward_hook(lambda *_: calls.__setitem__("denoiser", calls["denoiser"] + 1)),
    ]
    try:
        frames, height, width = demo_batch["video"].shape[1], *demo_batch["video"].shape[3:]
        model.generate(demo_batch, frames, height, width, num_inference_steps=3, guidance_scale=6.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"reference": 1, "denoiser": 3}  # before the loop, shared by every step and both CFG branches


def test_reference_blocks_the_pass_did_not_record_are_refused(demo_batch):
    model, _ = stage_one("cogvideox_tiny", "injectors.reference.blocks=[1,2]")
    with pytest.raises(ConfigError, match=r"(?s)acts on blocks \[1\].*recorded only blocks \[2, 3\].*same `blocks`"):
        model.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))
