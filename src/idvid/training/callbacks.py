"""Training callbacks that belong to the identity recipe."""

from __future__ import annotations

import lightning as L


class CoarseToFine(L.Callback):
    """Coarse-to-fine training: learn the low-frequency (input) path first, then add the in-block path.

    Until ``in_block_start_step`` the plan's in-block injectors (sites pre_attn / attn_ffn /
    post_attn) are bypassed: they add nothing and get no gradient. From that step on they
    act. The switch is derived from ``global_step`` each batch, so a resumed run is in the
    right stage without extra state.
    """

    def __init__(self, in_block_start_step: int = 0):
        if in_block_start_step < 0:
            raise ValueError(f"in_block_start_step={in_block_start_step} must be >= 0 (0 switches coarse-to-fine off).")
        self.in_block_start_step = in_block_start_step

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        enabled = trainer.global_step >= self.in_block_start_step
        if pl_module.plan.in_block_enabled != enabled:
            stage = "fine (in-block identity path on)" if enabled else "coarse (in-block identity path off)"
            print(f"[coarse-to-fine] step {trainer.global_step}: {stage}")
        pl_module.plan.in_block_enabled = enabled

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._update(trainer, pl_module)
        pl_module.log("train/in_block_enabled", float(pl_module.plan.in_block_enabled))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._update(trainer, pl_module)
