"""NaN guard: a non-finite loss or gradient skips the step; K in a row stop the run with the last good weights."""

from __future__ import annotations

import math

import pytest
import torch

from idvid.training.guard import DivergenceError, NonFiniteGuard
from idvid.verbs.fit import fit

from ..backbones.test_backbone_contract import TINY_BACKBONES
from ..conftest import compose_config
from .test_training import scalars

# Every run here trains a ConsisID plan.
pytestmark = pytest.mark.needs_plugin("idvid_consisid")

COMMON = ["experiment=plan_a", "trainer.val_check_interval=100", "callbacks.checkpoint.every_n_train_steps=100"]


def run(tmp_path, *overrides, poison):
    """fit() with the module's loss (or gradient) poisoned by ``poison(module, step)``."""
    from idvid.training import module as module_file

    original = module_file.IdentityVideoModule.compute_loss

    def compute_loss(self, batch, random):
        out = original(self, batch, random)
        return poison(self, out)

    module_file.IdentityVideoModule.compute_loss = compute_loss
    try:
        cfg = compose_config([*COMMON, *overrides], run_dir=tmp_path)
        tmp_path.mkdir(parents=True, exist_ok=True)
        return fit(cfg)
    finally:
        module_file.IdentityVideoModule.compute_loss = original


class Poison:
    """Make the loss (or only its gradient) non-finite on the given training calls (0-based)."""

    def __init__(self, calls, target: str):
        self.calls, self.target, self.count = set(calls), target, 0

    def __call__(self, module, out):
        if not module.training:
            return out
        call, self.count = self.count, self.count + 1
        if call in self.calls:
            if self.target == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # finite loss, infinite gradient
                out["loss"] = out["loss"] + _infinite_gradient(out["prediction"])
        return out


def _infinite_gradient(x: torch.Tensor) -> torch.Tensor:
    class Infinite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            ctx.shape = value.shape
            return value.new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return torch.full(ctx.shape, float("inf"))

    return Infinite.apply(x)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [tiny.config for tiny in TINY_BACKBONES])
@pytest.mark.parametrize("target", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path, target, backbone):
    loss = run(tmp_path, "trainer.max_steps=5", f"backbone={backbone}", poison=Poison({2}, target))
    assert loss is not None and math.isfinite(loss)
    _, skipped = scalars(tmp_path, "train/non_finite_steps")  # a running count
    assert skipped and {value for _, value in skipped} == {1.0}, skipped
    _, losses = scalars(tmp_path, "train/loss")
    assert all(math.isfinite(v) for _, v in losses)
    # The skip is logged at its step; no stale loss or gradient norm is repeated there.
    _, grad_norms = scalars(tmp_path, "train/grad_norm")
    assert [step for step, _ in grad_norms] == [0, 1, 3, 4]
    assert [step for step, _ in losses] == ([0, 1, 3, 4] if target == "loss" else [0, 1, 2, 3, 4])
    _, skips = scalars(tmp_path, "train/skipped")
    assert skips == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 0.0), (4, 0.0)]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_consecutive_non_finite_steps_stop_with_the_last_good_weights(tmp_path):
    with pytest.raises(DivergenceError, match=r"3 consecutive steps with a non-finite loss.*last_good.ckpt"):
        run(
            tmp_path,
            "trainer.max_steps=10",
            "model.non_finite.max_consecutive_steps=3",
            "callbacks.checkpoint.every_n_train_steps=2",
            poison=Poison(range(2, 100), "loss"),
        )
    last_good = torch.load(tmp_path / "checkpoints" / "last_good.ckpt", map_location="cpu", weights_only=True)
    after_two = torch.load(tmp_path / "checkpoints" / "step000002.ckpt", map_location="cpu", weights_only=True)
    # Skipped steps left the weights alone: the last good weights are those after the 2 good steps.
    assert last_good["state_dict"].keys() == after_two["state_dict"].keys()
    for key, value in after_two["state_dict"].items():
        assert torch.equal(last_good["state_dict"][key], value), key


def test_guard_counts_and_resets():
    guard = NonFiniteGuard(max_consecutive_steps=2)
    guard.bad_step()
    assert not guard.should_stop
    guard.good_step()
    guard.bad_step()
    guard.bad_step()
    assert guard.should_stop and guard.total == 3
    with pytest.raises(ValueError, match="max_consecutive_steps=0"):
        NonFiniteGuard(0)
