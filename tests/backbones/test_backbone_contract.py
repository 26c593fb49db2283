"""The shared backbone suite: every tiny backbone config below passes the same checks of the contract.

A new adapter adds one line to TINY_BACKBONES (its tiny Hydra config under hydra_conf/backbone/ and
where its blocks, attention and feed-forward live, for the spies) and gets every check for free:
the sites (no-op at zero, where each acts, block selection, gradient checkpointing, widening), the
training objective, the denoising schedule, the data path and LoRA, and exact resume of a short fit.
Family-specific checks (equivalence with diffusers, the family's own math) live next to this file.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf

from idvid.backbones.base import Backbone, DenoisingSchedule, NoisedLatents
from idvid.backbones.lora import LORA_WEIGHTS_FILE, add_lora
from idvid.injection import InjectionPlan, Site, TokenInjector
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build

from ..conftest import compose_config
from ..core.helpers import (
    ConstantInjector,
    ExtraChannels,
    LinearInjector,
    PatternInjector,
    backbone_inputs,
    run_backbone,
)
from ..core.test_training import build_model, demo_batch, run_fit, scalars  # noqa: F401  (demo_batch: a fixture)


@dataclass(frozen=True)
class TinyBackbone:
    config: str  # hydra_conf/backbone/<config>.yaml
    blocks: str  # the transformer's list of blocks
    attention: str  # the block's submodule that reads the block input (self-attention)
    feed_forward: str  # the block's submodule that reads the stream after attention (the FFN)

    def __str__(self) -> str:
        return self.config


TINY_BACKBONES = [
    TinyBackbone("cogvideox_tiny", blocks="transformer_blocks", attention="attn1", feed_forward="ff"),
    TinyBackbone("wan_tiny", blocks="blocks", attention="attn1", feed_forward="ffn"),
]
IN_BLOCK_SITES = [Site.PRE_ATTN, Site.ATTN_FFN, Site.POST_ATTN]


@pytest.fixture(params=TINY_BACKBONES, ids=str)
def tiny(request) -> TinyBackbone:
    return request.param


@functools.lru_cache(maxsize=None)
def _backbone_node(config: str) -> dict:
    return OmegaConf.to_container(compose_config([f"backbone={config}"]).backbone, resolve=True)


def make(tiny: TinyBackbone, **overrides) -> Backbone:
    node = copy.deepcopy(_backbone_node(tiny.config))
    torch.manual_seed(0)
    return build(PluginKind.BACKBONE, node.pop("name"), **{**node, **overrides}).eval()


# ------------------------------------------------------------------ sites
@pytest.mark.parametrize("site", IN_BLOCK_SITES)
def test_zero_injector_is_a_no_op_at_every_site(tiny, site):
    backbone = make(tiny)
    plan = InjectionPlan({"zero": ConstantInjector(backbone.info, site, value=0.0)})
    torch.testing.assert_close(run_backbone(backbone, plan), run_backbone(backbone), rtol=0, atol=0)
    assert plan.injectors["zero"].calls == list(range(backbone.info.num_layers))


class GridReader(TokenInjector):
    """Records the token grid the backbone hands to injectors that read it, and returns zero."""

    reads_token_grid = True

    def __init__(self, backbone):
        super().__init__(backbone, Site.ATTN_FFN, blocks=[0])
        self.grids = []

    def forward(self, block_index, hidden_states, prepared, token_grid):
        self.grids.append((token_grid, hidden_states.shape[1]))
        return torch.zeros_like(hidden_states)


def test_injectors_that_read_the_token_grid_get_the_video_tokens_layout(tiny):
    backbone = make(tiny)
    reader = GridReader(backbone.info)
    latents, timestep, text = backbone_inputs(backbone)
    run_backbone(backbone, InjectionPlan({"grid": reader}), inputs=(latents, timestep, text))
    info = backbone.info
    expected = (
        latents.shape[1] // info.patch_size_t,
        latents.shape[3] // info.patch_size,
        latents.shape[4] // info.patch_size,
    )
    assert reader.grids == [(expected, math.prod(expected))]


def test_widening_leaves_the_output_bit_identical(tiny):
    backbone = make(tiny)
    inputs = backbone_inputs(backbone)
    before = run_backbone(backbone, inputs=inputs)
    latent_channels = backbone.info.latent_channels
    backbone.set_input_channels(latent_channels)
    assert backbone.input_layer.in_channels == 2 * latent_channels
    latents, timestep, text = inputs
    # Any content in the new channels: the widened weights start at zero, so nothing changes at step 0.
    widened = torch.cat([latents, torch.randn_like(latents)], dim=2)
    torch.testing.assert_close(run_backbone(backbone, inputs=(widened, timestep, text)), before, rtol=0, atol=0)
    backbone.set_input_channels(latent_channels)  # already that wide: kept as it is
    assert backbone.input_layer.in_channels == 2 * latent_channels


def test_two_input_concat_injectors_add_up_their_channels(tiny):
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    plan = InjectionPlan({"a": ExtraChannels(backbone.info, 16), "b": ExtraChannels(backbone.info, 3)})
    assert plan.extra_input_channels == 19
    backbone.set_input_channels(plan.extra_input_channels)
    extra = plan.concat_latents({"extra": torch.randn(2, 1, 16, 1, 1)}, latents)
    assert extra.shape == (*latents.shape[:2], 19, *latents.shape[3:])
    output = backbone(torch.cat([latents, extra], dim=2), timestep, text)
    assert output.shape == latents.shape


def _spy(backbone, tiny, block_index):
    """Record what the attention and the feed-forward of one block, and the next block's attention, read."""
    seen: dict[str, torch.Tensor] = {}
    blocks = getattr(backbone.transformer, tiny.blocks)

    def record(name):
        def hook(module, args, kwargs):
            first = args[0] if args else kwargs["hidden_states"]
            seen[name] = first.detach().clone()

        return hook

    parts = {
        "attention": getattr(blocks[block_index], tiny.attention),
        "feed_forward": getattr(blocks[block_index], tiny.feed_forward),
        "next_block": getattr(blocks[block_index + 1], tiny.attention),
    }
    return seen, [m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in parts.items()]


@pytest.mark.parametrize(
    "site, changes",
    [
        # pre_attn: the block's own input carries the residual, so attention already sees it.
        (Site.PRE_ATTN, {"attention": True, "feed_forward": True, "next_block": True}),
        # attn_ffn: attention saw the clean stream, the FFN sees the injected one.
        (Site.ATTN_FFN, {"attention": False, "feed_forward": True, "next_block": True}),
        # post_attn: the whole block ran clean; only what follows sees it.
        (Site.POST_ATTN, {"attention": False, "feed_forward": False, "next_block": True}),
    ],
)
def test_each_site_acts_where_it_claims(tiny, site, changes):
    backbone = make(tiny)
    block = 1
    seen = []
    for plan in (None, InjectionPlan({"p": PatternInjector(backbone.info, site, blocks=[block])})):
        inputs, hooks = _spy(backbone, tiny, block)
        run_backbone(backbone, plan)
        for hook in hooks:
            hook.remove()
        seen.append(inputs)
    clean, injected = seen
    for name, should_change in changes.items():
        changed = not torch.equal(clean[name], injected[name])
        assert changed == should_change, f"{site.value}: {name} changed={changed}"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [0, 1, 2, 3]),
        ("odd", [1, 3]),
        ("even", [0, 2]),
        ({"every": 2}, [0, 2]),
        ({"every": 3, "offset": 1}, [1]),
        ([3, 0], [0, 3]),
    ],
)
def test_block_selection_hits_exactly_the_configured_blocks(tiny, spec, expected):
    backbone = make(tiny, transformer={**_backbone_node(tiny.config)["transformer"], "num_layers": 4})
    injectors = {site.value: ConstantInjector(backbone.info, site, blocks=spec) for site in IN_BLOCK_SITES}
    run_backbone(backbone, InjectionPlan(injectors))
    for injector in injectors.values():
        assert injector.calls == expected


def test_gradient_checkpointing_gives_identical_outputs_and_gradients(tiny):
    results = []
    for checkpointing in (False, True):
        backbone = make(tiny, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(3)
        plan = InjectionPlan({s.value: LinearInjector(backbone.info, s, blocks="odd") for s in IN_BLOCK_SITES})
        signal = torch.tensor([1.0, 0.5], requires_grad=True)
        output = run_backbone(backbone, plan, {"signal": signal})
        output.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in plan.named_parameters()}
        grads |= {
            f"transformer.{n}": p.grad.clone() for n, p in backbone.transformer.named_parameters() if p.grad is not None
        }
        results.append((output.detach(), grads, signal.grad.clone()))
    (out_a, grads_a, sig_a), (out_b, grads_b, sig_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(sig_a, sig_b, rtol=1e-5, atol=1e-7)
    assert grads_a.keys() == grads_b.keys()
    assert all(grads_a[f"injectors.{s.value}.proj.weight"].abs().sum() > 0 for s in IN_BLOCK_SITES)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.needs_plugin("idvid_consisid")
def test_gradient_checkpointing_does_not_change_the_training_loss(tiny, demo_batch):  # noqa: F811
    results = []
    for checkpointing in ("false", "true"):
        model, _ = build_model("plan_c", f"backbone={tiny.config}", f"backbone.gradient_checkpointing={checkpointing}")
        model.train()
        loss = model.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------- training objective
def _clean_latents(backbone, batch=3):
    _, frames, channels, height, width = backbone.latent_shape(batch, *backbone.default_video_size)
    return torch.randn(batch, frames, channels, height, width, generator=torch.Generator().manual_seed(2))


def test_training_noise_has_the_contract_shapes_and_is_drawn_through_random(tiny):
    backbone = make(tiny)
    clean = _clean_latents(backbone)
    noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)))
    assert isinstance(noised, NoisedLatents)
    assert noised.noisy.shape == noised.target.shape == clean.shape
    assert noised.timesteps.shape == noised.weight.shape == (3,)
    assert noised.weight.dtype == torch.float32 and bool((noised.weight > 0).all() and noised.weight.isfinite().all())
    assert backbone.to_target_space(torch.zeros_like(clean), noised).shape == clean.shape
    again = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)))
    assert torch.equal(again.noisy, noised.noisy) and torch.equal(again.timesteps, noised.timesteps)
    other = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(1)))
    assert not torch.equal(other.noisy, noised.noisy)


def test_t_fraction_fixes_every_timestep_from_least_to_most_noise(tiny):
    backbone = make(tiny)
    clean = _clean_latents(backbone)

    def at(fraction):
        return backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)), fraction)

    low, high = at(0.0), at(1.0)
    for noised in (low, high):
        assert (noised.timesteps == noised.timesteps[0]).all()
    assert (low.noisy - clean).norm() < (high.noisy - clean).norm()
    # Same draws at every fraction: the held-out quantile losses differ only by the noise level.
    assert torch.equal(at(0.5).noisy, at(0.5).noisy)


def test_the_training_loss_is_zero_for_the_target_and_positive_otherwise(tiny):
    backbone = make(tiny)
    loss_fn = build(PluginKind.LOSS, "weighted_mse")
    clean = _clean_latents(backbone)
    noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)), 0.5)
    assert loss_fn(noised.target, noised.target, noised.weight) == 0
    prediction = backbone.to_target_space(torch.zeros_like(clean), noised)
    assert loss_fn(prediction, noised.target, noised.weight) > 0


# ------------------------------------------------------------------- sampling
def _denoise(backbone, schedule, latents, text):
    for i, t in enumerate(schedule.timesteps):
        model_input = schedule.scale_model_input(latents, t)
        prediction = backbone(model_input, t.expand(latents.shape[0]), text)
        latents = schedule.step(prediction, i, latents, generator=torch.Generator().manual_seed(i))
    return latents


@torch.no_grad()
def test_sampling_schedule_steps_and_keeps_its_state_to_one_run(tiny):
    backbone = make(tiny)
    latents, _, text = backbone_inputs(backbone, batch=1)
    latents = latents[:, :, : backbone.info.latent_channels]
    schedule = backbone.sampling_schedule(3, "cpu")
    assert isinstance(schedule, DenoisingSchedule) and len(schedule.timesteps) == 3
    start = schedule.prepare_initial_noise(latents)
    assert start.shape == latents.shape
    first = _denoise(backbone, schedule, start, text)
    assert first.shape == latents.shape and bool(first.isfinite().all()) and not torch.equal(first, start)
    # A second run from a fresh schedule repeats the first exactly: no solver state leaks between runs.
    second = _denoise(backbone, backbone.sampling_schedule(3, "cpu"), start, text)
    torch.testing.assert_close(second, first, rtol=0, atol=0)


# ----------------------------------------------------------------------- data
@torch.no_grad()
def test_video_round_trip_and_latent_shape(tiny):
    backbone = make(tiny)
    frames, height, width = backbone.default_video_size
    video = torch.rand(1, frames, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean_latents = backbone.encode_video(video)
    assert mean_latents.shape == backbone.latent_shape(1, frames, height, width)
    mean, std = backbone.encode_posterior(video)
    torch.testing.assert_close(backbone.latents_from_posterior(mean, std), mean_latents, rtol=0, atol=0)
    sampled = backbone.encode_video(video, BatchRandom(torch.Generator().manual_seed(0)))
    assert not torch.equal(sampled, mean_latents)
    decoded = backbone.decode_latents(mean_latents)
    assert decoded.shape == video.shape and decoded.min() >= -1 and decoded.max() <= 1
    with pytest.raises(ValueError, match=f"Cannot sample {frames + 1} frames.*nearest"):
        backbone.latent_shape(1, frames + 1, height, width)


def test_text_embeddings_have_the_declared_width(tiny):
    backbone = make(tiny)
    embeddings = backbone.encode_text(["a person smiling", ""])
    assert embeddings.shape[0] == 2 and embeddings.shape[-1] == backbone.info.text_hidden_size


# ----------------------------------------------------------------------- LoRA
def test_default_lora_targets_exist_and_export_in_the_family_format(tiny, tmp_path):
    backbone = make(tiny)
    add_lora(backbone.transformer, backbone.lora_targets, rank=2)
    path = backbone.save_lora(tmp_path)
    assert path == tmp_path / LORA_WEIGHTS_FILE and path.is_file()


# --------------------------------------------------------------------- resume
@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_resumed_fit_reproduces_the_uninterrupted_losses_exactly(tiny, tmp_path):
    common = [
        "experiment=plan_c",
        f"backbone={tiny.config}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "callbacks.checkpoint.every_n_train_steps=2",
    ]
    run_fit(tmp_path / "full", *common)
    checkpoint = tmp_path / "full" / "checkpoints" / "step000002.ckpt"
    assert checkpoint.is_file()
    run_fit(tmp_path / "resumed", *common, f"ckpt_path={checkpoint}")
    _, full = scalars(tmp_path / "full", "train/loss")
    _, resumed = scalars(tmp_path / "resumed", "train/loss")
    assert [s for s, _ in resumed] == [2, 3] and all(math.isfinite(v) for _, v in full)
    assert resumed == full[2:]  # bit-for-bit: same data draws, noise, timesteps and recipe coins
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    # The demo's frozen parts are random, not from disk: they must travel with the checkpoint.
    assert any(k.startswith("backbone.vae.") for k in state) and any(
        k.startswith("conditioners.identity.") for k in state
    )
    assert any(k.startswith("plan.injectors.identity.") for k in state)
