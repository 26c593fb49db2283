"""Training callbacks (the recipe's schedules, e.g. coarse-to-fine, are recipe steps: idvid.training.recipe)."""

from __future__ import annotations

import lightning as L
import torch


class ExponentialMovingAverage(L.Callback):
    """An exponential moving average of the trainable weights, kept in float32.

    After every optimizer step: ``ema = decay * ema + (1 - decay) * weight``. The average is
    part of the checkpoint (so resume continues it exactly) and ``load_module(ckpt, ema=True)``
    or ``python -m idvid export CKPT --ema ...`` use it instead of the raw weights. Weights
    sharded by ZeRO-3 are not supported (each rank only holds a part of them).
    """

    def __init__(self, enabled: bool = False, decay: float = 0.9999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in (0, 1); typical values are 0.999 to 0.9999.")
        self.enabled, self.decay = enabled, decay
        self.shadow: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trainable(pl_module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: p for name, p in pl_module.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.enabled and not self.shadow:  # a resumed run already has its average from the checkpoint
            self.shadow = {n: p.detach().float().clone() for n, p in self._trainable(pl_module).items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only after an optimizer step, not after every accumulated micro-batch
        for name, parameter in self._trainable(pl_module).items():
            self.shadow[name].lerp_(parameter.detach().float().to(self.shadow[name].device), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow} if self.enabled else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shadow = dict(state_dict.get("shadow", {}))
