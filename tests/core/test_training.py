"""Experiments compose, every plan trains with the intended gradients, resume is exact."""

from __future__ import annotations

import math

import hydra
import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from idvid.injection import Site
from idvid.randomness import BatchRandom
from idvid.verbs.fit import fit

from ..conftest import EXPERIMENTS, TINY_SCALE, compose_config

# experiment -> (extra input channels, {site: blocks} of the in-block identity path)
EXPECTED_PLANS = {
    "baseline": (0, {}),
    "plan_a": (16, {}),
    "plan_b": (0, {Site.ATTN_FFN: [0, 2]}),
    "plan_c": (16, {Site.ATTN_FFN: [0, 2]}),
    "plan_d": (16, {Site.ATTN_FFN: [0, 2]}),
    "plan_e": (16, {Site.PRE_ATTN: [0, 2]}),
    "plan_f": (16, {Site.POST_ATTN: [0, 2]}),
    "plan_g": (0, {Site.PRE_ATTN: [0, 2]}),
    "consisid_preview": (16, {Site.POST_ATTN: [0, 2]}),
    "magicme_id": (0, {}),  # identity enters as learned text tokens (site text_tokens)
    "lynx": (0, {Site.ATTN_FFN: [0, 1, 2, 3]}),  # ID-adapter and Ref-adapter in every block
    # MegActor-Sigma: driven encoder (16 channels) and reference attention in the last 2 blocks; stage 2 adds audio
    # attention in every block, stage 3 temporal attention in odd blocks (all at attn_ffn: the mapping below keeps
    # the last injector of a site)
    "megactor_stage1_visual": (16, {Site.ATTN_FFN: [2, 3]}),
    "megactor_stage2_mixed": (16, {Site.ATTN_FFN: [0, 1, 2, 3]}),
    "megactor_stage3_motion": (16, {Site.ATTN_FFN: [1, 3]}),
    "concatid": (0, {}),  # identity enters as reference tokens (site sequence_concat)
    "standin": (0, {}),
}
# Experiments whose injectors have no parameters of their own (the backbone learns to read them).
WITHOUT_INJECTOR_PARAMETERS = {"baseline", "concatid"}
KPS = {"plan_a": True, "plan_c": True, "plan_d": False, "plan_e": True, "plan_f": True, "consisid_preview": False}


def build_model(experiment: str, *overrides: str):
    cfg = compose_config([f"experiment={experiment}", *overrides])
    L.seed_everything(0)
    return hydra.utils.instantiate(cfg.model), cfg


@pytest.fixture(scope="module")
def demo_batch():
    # With the audio keys (the window of the tiny demo Whisper), which the audio-driven experiments read.
    cfg = compose_config(["data.audio_mel_frames=200"])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    return next(iter(datamodule.train_dataloader()))


@pytest.mark.needs_plugin("idvid_consisid")
def test_every_experiment_is_covered():
    assert sorted(EXPECTED_PLANS) == EXPERIMENTS


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_into_its_plan(experiment):
    model, _ = build_model(experiment)
    extra, sites = EXPECTED_PLANS[experiment]
    assert model.plan.extra_input_channels == extra
    assert model.backbone.transformer.config.in_channels == 16 + extra
    assert {i.site: i.block_indices for i in model.plan.token_injectors} == sites
    concat = model.plan.concat_injectors
    if experiment in KPS:
        assert concat[0].use_kps == KPS[experiment]


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainable", ["all", "injectors"])
def test_exactly_the_intended_parameters_receive_gradients(experiment, trainable, demo_batch):
    if trainable == "injectors" and experiment in WITHOUT_INJECTOR_PARAMETERS:
        with pytest.raises(Exception, match="model.trainable=injectors leaves nothing to train"):
            build_model(experiment, f"model.trainable={trainable}")
        return
    model, _ = build_model(experiment, f"model.trainable={trainable}")
    model.train()
    with torch.no_grad():  # zero-initialised layers (output projections, widened input channels) pass no gradient
        for parameter in model.plan.parameters():  # upstream at step 0: give them values so every path carries one
            parameter.add_(1e-2 * torch.randn_like(parameter))
        model.backbone.input_layer.weight.add_(1e-2 * torch.randn_like(model.backbone.input_layer.weight))
    # Learned text tokens train only where a caption names them: name them in every caption.
    names = " ".join(model.backbone.text_placeholders)
    batch = {**demo_batch, "caption": [f"{names} {c}".strip() for c in demo_batch["caption"]]}
    loss = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {n for n, _ in model.plan.named_parameters(prefix="plan")}
    if trainable == "all":
        expected |= {n for n, _ in model.backbone.transformer.named_parameters(prefix="backbone.transformer")}
    elif model.plan.extra_input_channels:
        expected |= {"backbone.transformer.patch_embed.proj.weight", "backbone.transformer.patch_embed.proj.bias"}
    # A zero-initialised output projection blocks gradient to nothing here: diffusers inits are random.
    conditioners_with_grad = {n for n in with_grad if n.startswith("conditioners.")}
    assert with_grad - conditioners_with_grad == expected
    assert not any(n.startswith(("backbone.vae", "backbone.text_encoder")) for n in with_grad)
    # Conditioners that train (a trainable reference pass's own transformer) get gradients, frozen ones none
    # (the reference pass's output head after the recorded blocks gets none either: its output is not used).
    trained = {n for n, p in model.conditioners.named_parameters(prefix="conditioners") if p.requires_grad}
    assert conditioners_with_grad <= trained
    assert bool(conditioners_with_grad) == any(c.trainable for c in model.conditioners.values())


@pytest.mark.needs_plugin("idvid_consisid")
def test_coarse_to_fine_bypasses_the_in_block_path(demo_batch):
    model, _ = build_model("plan_c", "recipe=none")
    model.train()
    model.plan.in_block_enabled = False
    loss = model.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    loss.backward()
    identity = model.plan.injectors["identity"]
    assert all(p.grad is None for p in identity.parameters())
    assert model.backbone.transformer.patch_embed.proj.weight.grad is not None
    # Bypassed equals a plan without the in-block injector.
    plan_a, _ = build_model("plan_a", "recipe=none")
    plan_a.backbone.load_state_dict(model.backbone.state_dict())
    torch.testing.assert_close(
        plan_a.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"],
        loss.detach(),
        rtol=0,
        atol=0,
    )


@pytest.mark.needs_plugin("idvid_consisid")
def test_missing_condition_is_refused_at_start_up():
    with pytest.raises(InstantiationException, match=r"'id_cond', needed by injector\(s\) identity"):
        build_model("plan_b", "conditioners=reference", "conditioners.reference=null")


@pytest.mark.needs_plugin("idvid_consisid")
def test_unknown_plugin_lists_the_known_ones():
    with pytest.raises(InstantiationException, match="Unknown injector plugin 'nope'.*consisid.global_face_latent"):
        build_model("plan_a", "injectors.face_latent.name=nope")


def test_trainer_config_lists_every_trainer_argument():
    import inspect

    cfg = compose_config([])
    arguments = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    assert arguments <= set(cfg.trainer), f"missing in hydra_conf/trainer/default.yaml: {arguments - set(cfg.trainer)}"


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events, [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def run_fit(run_dir, *overrides):
    cfg = compose_config(list(overrides), run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return fit(cfg)


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_plan_trains_three_steps(experiment, tmp_path):
    loss = run_fit(
        tmp_path,
        f"experiment={experiment}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "model.validation.sample=false",
        "callbacks.checkpoint.every_n_train_steps=3",
    )
    assert loss is not None and math.isfinite(loss)
    _, losses = scalars(tmp_path, "train/loss")
    assert [s for s, _ in losses] == [0, 1, 2] and all(math.isfinite(v) for _, v in losses)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    events, _ = scalars(tmp_path, "val/loss")
    quantile_tags = {f"val/loss_t{q / 10:.1f}" for q in range(1, 10)}
    assert quantile_tags <= set(events.Tags()["scalars"])
    assert all(math.isfinite(events.Scalars(tag)[0].value) for tag in quantile_tags)


@pytest.mark.needs_plugin("idvid_consisid")
def test_checkpoint_leaves_out_frozen_weights_that_come_from_disk(tmp_path, backbone_config):
    from idvid.backbones.cogvideox import CogVideoXBackbone

    source = CogVideoXBackbone(**backbone_config)
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(source, name).save_pretrained(tmp_path / "pipeline" / name)
    model, _ = build_model("plan_a", f"backbone.pretrained={tmp_path / 'pipeline'}")
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    stored = torch.load(tmp_path / "x.ckpt", map_location="cpu", weights_only=True)
    assert "backbone.transformer.patch_embed.proj.weight" in stored["state_dict"]
    assert not any(k.startswith(("backbone.vae.", "backbone.text_encoder.")) for k in stored["state_dict"])
    again, _ = build_model("plan_a", f"backbone.pretrained={tmp_path / 'pipeline'}")
    again.on_load_checkpoint(stored)
    again.load_state_dict(stored["state_dict"], strict=True)
    torch.testing.assert_close(
        again.backbone.transformer.patch_embed.proj.weight, model.backbone.transformer.patch_embed.proj.weight
    )


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    """Two gloo processes with batch 1 each draw and compute what one process with batch 2 does."""
    import subprocess
    import sys

    common = [
        "experiment=plan_c",
        TINY_SCALE,
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "model.validation.sample=false",
        "callbacks.checkpoint.every_n_train_steps=3",
    ]
    runs = {
        "ddp": [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "data.batch_size=1",
        ],
        "single": ["data.batch_size=2"],
    }
    for name, overrides in runs.items():
        command = [sys.executable, "-m", "idvid", "fit", *common, *overrides, f"hydra.run.dir={tmp_path / name}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    for tag in ("train/loss", "train/grad_norm", "val/loss"):
        _, ddp = scalars(tmp_path / "ddp", tag)
        _, single = scalars(tmp_path / "single", tag)
        assert len(ddp) == len(single) > 0, tag
        for (step_a, a), (step_b, b) in zip(ddp, single):
            assert step_a == step_b and a == pytest.approx(b, rel=1e-5, abs=1e-6), (tag, step_a, a, b)


@pytest.mark.needs_plugin("idvid_consisid")
def test_held_out_loss_at_a_fixed_timestep_is_deterministic(demo_batch):
    model, _ = build_model("plan_c")
    model.eval()

    def loss_at(t_fraction):
        return model.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)), t_fraction)["loss"]

    with torch.no_grad():
        assert torch.equal(loss_at(0.1), loss_at(0.1))
        assert not torch.equal(loss_at(0.1), loss_at(0.9))


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.parametrize(
    "preset, stage, offload",
    [("deepspeed_zero2", 2, False), ("deepspeed_zero3", 3, False), ("deepspeed_zero2_offload", 2, True)],
)
def test_deepspeed_presets_build_lightnings_strategy(preset, stage, offload):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = compose_config(["experiment=plan_c", f"trainer={preset}", "data.batch_size=3"])
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload
    assert cfg.trainer.precision == "bf16-mixed" and strategy.config["train_micro_batch_size_per_gpu"] == 3


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.parametrize("preset", ["cpu", "gpu", "ddp"])
def test_plain_presets_compose(preset):
    cfg = compose_config(["experiment=plan_c", f"trainer={preset}", "trainer.max_steps=7"])
    assert cfg.trainer.max_steps == 7 and cfg.trainer.use_distributed_sampler is False


def test_ema_callback_averages_after_optimizer_steps_only():
    from types import SimpleNamespace

    from idvid.training.callbacks import ExponentialMovingAverage

    layer = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(enabled=True, decay=0.9)
    trainer = SimpleNamespace(accumulate_grad_batches=2)
    ema.on_fit_start(trainer, layer)
    start = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.on_train_batch_end(trainer, layer, None, None, batch_idx=0)  # accumulating: no step yet
    assert torch.equal(ema.shadow["weight"], start["weight"])
    ema.on_train_batch_end(trainer, layer, None, None, batch_idx=1)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * start["weight"] + 0.1 * layer.weight.detach())
    restored = ExponentialMovingAverage(enabled=True, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="EMA decay=1.0"):
        ExponentialMovingAverage(decay=1.0)


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["cogvideox_tiny", "wan_tiny"])  # tests/backbones' TINY_BACKBONES
def test_ema_is_saved_resumed_and_loadable(tmp_path, backbone):
    from idvid.interop import load_module

    common = [
        "experiment=plan_c",
        f"backbone={backbone}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.ema.enabled=true",
        "callbacks.ema.decay=0.5",
    ]
    run_fit(tmp_path / "full", *common)
    run_fit(tmp_path / "resumed", *common, f"ckpt_path={tmp_path / 'full' / 'checkpoints' / 'step000002.ckpt'}")
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    shadow = full["callbacks"]["ExponentialMovingAverage"]["shadow"]
    for name, value in resumed["callbacks"]["ExponentialMovingAverage"]["shadow"].items():
        assert torch.equal(value, shadow[name]), name  # the average resumes exactly

    averaged = load_module(tmp_path / "full" / "checkpoints" / "last.ckpt", ema=True)
    raw = load_module(tmp_path / "full" / "checkpoints" / "last.ckpt")
    name = "backbone.transformer.proj_out.weight"
    assert torch.equal(dict(averaged.named_parameters())[name], shadow[name])
    assert not torch.equal(dict(raw.named_parameters())[name], shadow[name])
    with pytest.raises(ValueError, match="holds no EMA weights"):
        load_module(_without_ema(tmp_path), ema=True)


def _without_ema(tmp_path):
    checkpoint = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["callbacks"].pop("ExponentialMovingAverage")
    path = tmp_path / "no_ema.ckpt"
    torch.save(checkpoint, path)
    return path
