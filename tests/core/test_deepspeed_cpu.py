"""idvid trains under Lightning's DeepSpeedStrategy (ZeRO-2 and ZeRO-3) with two gloo processes on CPU.

Lightning refuses DeepSpeed without CUDA, so the runs use ``CPUDeepSpeedStrategy`` below: the
same strategy with the CUDA-only checks taken out. Everything else is the real CLI
(``python -m idvid fit``), the real ``deepspeed_zero2`` / ``deepspeed_zero3`` presets and
Lightning's DDP-style launcher, which re-runs the command line for rank 1. A DeepSpeed
checkpoint is a folder (``step000002.ckpt/``); ``ckpt_path`` takes it as it is.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from omegaconf import OmegaConf

from idvid.training.module import IdentityVideoModule

# Every run here trains a ConsisID plan.
pytestmark = pytest.mark.needs_plugin("idvid_consisid")

REPO_ROOT = Path(__file__).resolve().parents[2]
STRATEGY = "tests.core.test_deepspeed_cpu.CPUDeepSpeedStrategy"  # imported by name in both ranks (PYTHONPATH)


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy without its CUDA-only checks (test only: DeepSpeed's CPU accelerator + gloo)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's "only CUDA" check

    def setup_distributed(self) -> None:
        # Lightning's, minus _validate_device_index_selection (CPU devices have no index).
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        # Lightning's, with the local rank instead of root_device.index (None on CPU).
        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


class PoisonedModule(IdentityVideoModule):
    """Test only: the training loss is NaN at the given global steps (built by name in both ranks)."""

    def __init__(self, poison_steps=(), **kwargs):
        # Plain containers before Lightning records the arguments, so checkpoints load with weights_only.
        plain = {k: OmegaConf.to_container(v, resolve=True) for k, v in kwargs.items() if OmegaConf.is_config(v)}
        kwargs = {**kwargs, **plain}
        poison_steps = list(poison_steps)
        super().__init__(**kwargs)
        self.poison_steps = set(poison_steps)

    def compute_loss(self, batch, random):
        out = super().compute_loss(batch, random)
        if self.training and self.global_step in self.poison_steps:
            out["loss"] = out["loss"] * float("nan")
        return out


COMMON = [
    "experiment=plan_c",
    "scale=tiny",
    "model.validation.sample=false",
    "trainer.val_check_interval=100",
    "callbacks.checkpoint.every_n_train_steps=2",
]
DEEPSPEED = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "data.batch_size=1",
    f"trainer.strategy._target_={STRATEGY}",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(DS_ACCELERATOR="cpu", DS_BUILD_OPS="0", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return env


def _fit(run_dir: Path, *overrides: str, returncode: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "idvid", "fit", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=_env())
    assert (result.returncode == 0) == (returncode == 0), result.stdout[-2000:] + result.stderr[-5000:]
    return result


def _consolidate(checkpoint_dir: Path, output: Path) -> dict[str, torch.Tensor]:
    from idvid.interop import consolidate

    assert checkpoint_dir.is_dir(), f"{checkpoint_dir} is not a DeepSpeed checkpoint directory"
    return torch.load(consolidate(checkpoint_dir, output), map_location="cpu", weights_only=True)["state_dict"]


# Both ZeRO stages on CogVideoX, resumed from a mid-run checkpoint; ZeRO-2 on Wan too, without the resumed
# run (resume under DeepSpeed does not depend on the family, and the shared backbone suite checks exact
# resume on Wan): the contract under DeepSpeed is training, logging, consolidation and export.
RUNS = [(2, "cogvideox_tiny", True), (3, "cogvideox_tiny", True), (2, "wan_tiny", False)]


@pytest.fixture(scope="module", params=RUNS, ids=[f"zero{stage}-{backbone}" for stage, backbone, _ in RUNS])
def deepspeed_runs(request, tmp_path_factory):
    """One 4-step run checkpointing every 2 steps and, where asked, one resumed from its step-2 checkpoint."""
    stage, backbone, resume = request.param
    root = tmp_path_factory.mktemp(f"zero{stage}-{backbone}")
    overrides = [*COMMON, f"backbone={backbone}", f"trainer=deepspeed_zero{stage}", *DEEPSPEED, "trainer.max_steps=4"]
    _fit(root / "full", *overrides)
    step2 = root / "full" / "checkpoints" / "step000002.ckpt"
    assert step2.is_dir(), sorted(p.name for p in (root / "full" / "checkpoints").iterdir())
    if resume:
        _fit(root / "resumed", *overrides, f"ckpt_path={step2}")
    return stage, root, overrides


@pytest.mark.slow
def test_deepspeed_resume_on_two_cpu_processes_is_exact(deepspeed_runs):
    from .test_training import scalars

    _, root, _ = deepspeed_runs
    if not (root / "resumed").is_dir():
        pytest.skip("this backbone's DeepSpeed run checks training and consolidation; resume is checked on CogVideoX")
    _, full = scalars(root / "full", "train/loss")
    _, resumed = scalars(root / "resumed", "train/loss")
    assert [s for s, _ in full] == [0, 1, 2, 3], full
    assert [s for s, _ in resumed] == [2, 3], resumed
    # Same processes, same reduction order, same seeded per-step randomness: bit-identical.
    assert resumed == full[2:], (full, resumed)
    assert all(torch.isfinite(torch.tensor(v)) for _, v in full)


@pytest.mark.slow
def test_deepspeed_checkpoint_consolidates_into_the_model(deepspeed_runs, tmp_path):
    import hydra
    import lightning as L

    from ..conftest import compose_config

    _, root, overrides = deepspeed_runs
    # The verb a user runs; the rest of the checks gather through the same function.
    command = [sys.executable, "-m", "idvid", "consolidate", str(root / "full" / "checkpoints" / "step000004.ckpt")]
    result = subprocess.run([*command, str(tmp_path / "full.pt")], capture_output=True, text=True, env=_env())
    assert result.returncode == 0 and "wrote" in result.stdout, result.stderr[-3000:]
    full = torch.load(tmp_path / "full.pt", map_location="cpu", weights_only=True)["state_dict"]
    step2 = _consolidate(root / "full" / "checkpoints" / "step000002.ckpt", tmp_path / "step2.pt")

    # The model `fit` built: same config, same seed, same order (seed, data, model).
    cfg = compose_config([o for o in overrides if not o.startswith(("trainer.", "trainer="))], run_dir=tmp_path)
    L.seed_everything(cfg.seed, workers=True)
    hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable

    result = model.load_state_dict(full, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert not trainable & set(result.missing_keys), sorted(trainable & set(result.missing_keys))
    for name, parameter in model.named_parameters():
        if name in trainable:
            torch.testing.assert_close(parameter.detach(), full[name], rtol=0, atol=0)

    # Resumed from step 2 == uninterrupted, bit for bit; both trained away from the start and from step 2.
    if (root / "resumed").is_dir():
        resumed = _consolidate(root / "resumed" / "checkpoints" / "step000004.ckpt", tmp_path / "resumed.pt")
        assert set(full) == set(resumed)
        for name in trainable:
            torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(full[n], initial[n]) for n in trainable)
    assert any(not torch.equal(full[n], step2[n]) for n in trainable)
    assert any(not torch.equal(step2[n], initial[n]) for n in trainable)
    # The consolidated file is a kit checkpoint: idvid's own loader (sample, init_from) rebuilds the whole module.
    from idvid.interop import load_module

    rebuilt = load_module(tmp_path / "full.pt").state_dict()
    assert set(rebuilt) <= set(full)
    for name, value in rebuilt.items():
        torch.testing.assert_close(value, full[name], rtol=0, atol=0, msg=name)
    # The folder itself also loads (gathered on the fly), so `sample` and `export` take it as it is.
    from_folder = load_module(root / "full" / "checkpoints" / "step000004.ckpt").state_dict()
    assert all(torch.equal(from_folder[name], value) for name, value in rebuilt.items())
    from idvid.verbs.convert import export

    exported = export(str(root / "full" / "checkpoints" / "step000004.ckpt"), "idvid", str(tmp_path / "export"))
    transformer_class = type(model.backbone.transformer)  # the family's diffusers class
    transformer = transformer_class.from_pretrained(exported / "transformer").state_dict()
    for name, value in transformer.items():
        torch.testing.assert_close(value, full[f"backbone.transformer.{name}"], rtol=0, atol=0, msg=name)

    # The step-2 weights start from the model `fit` built, so frozen weights stored in it are the initial ones.
    for name in set(step2) - trainable:
        if name in initial:
            torch.testing.assert_close(step2[name].to(initial[name].dtype), initial[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_deepspeed_logs_the_gradient_norm(deepspeed_runs):
    from .test_training import scalars

    _, root, _ = deepspeed_runs
    norms = scalars(root / "full", "train/grad_norm")[1]
    assert [step for step, _ in norms] == [0, 1, 2, 3]
    assert all(math.isfinite(value) and value > 0 for _, value in norms)


@pytest.mark.slow
def test_deepspeed_skips_non_finite_steps_and_stops_after_k_in_a_row(tmp_path):
    """ZeRO-2: a NaN loss at step 1 is skipped; NaN at steps 3, 4 (K=2 in a row) stops with the last good weights."""
    from .test_training import scalars

    result = _fit(
        tmp_path,
        *COMMON,
        "trainer=deepspeed_zero2",
        *DEEPSPEED,
        "trainer.max_steps=8",
        "callbacks.checkpoint.every_n_train_steps=1",
        "model.non_finite.max_consecutive_steps=2",
        "model._target_=tests.core.test_deepspeed_cpu.PoisonedModule",
        "+model.poison_steps=[1,3,4,5,6,7]",
        returncode=1,
    )
    stopped = re.search(r"2 consecutive steps with a non-finite loss \(the last at step (\d+)\)", result.stderr)
    assert stopped and stopped.group(1) == "4", result.stderr[-3000:]
    _, losses = scalars(tmp_path, "train/loss")
    assert losses and all(math.isfinite(value) for _, value in losses), losses  # a NaN loss is never logged
    _, skipped = scalars(tmp_path, "train/non_finite_steps")
    assert skipped[0] == (1, 1.0) and skipped[-1][1] >= 2.0, skipped  # a running count, from step 1 on

    checkpoints = tmp_path / "checkpoints"
    weights = {
        name: _consolidate(checkpoints / name, tmp_path / f"{name}.pt")
        for name in ("step000001.ckpt", "step000002.ckpt", "step000003.ckpt", "step000004.ckpt", "last_good.ckpt")
    }
    trainable = [k for k in weights["step000001.ckpt"] if "transformer" in k or "plan." in k]

    def same(a: str, b: str) -> bool:
        return all(torch.equal(weights[a][k], weights[b][k]) for k in trainable)

    assert same("step000001.ckpt", "step000002.ckpt")  # step 1 (NaN) changed nothing
    assert not same("step000002.ckpt", "step000003.ckpt")  # step 2 trained
    assert same("step000003.ckpt", "step000004.ckpt") and same("step000004.ckpt", "last_good.ckpt")
