"""Dataloader wait as a share of training step time, `fit experiment=plan_c` on the demo data.

The wait of step k is the time from the end of step k-1 to the start of step k (Lightning
fetches the next batch in between); the step is forward, backward and optimizer. Prints both
per step (median) and the share of the total spent waiting (target: < 5%). The first steps
(warm-up, worker start) are left out. The wait includes Lightning's own work between steps;
`--free-loader` measures that floor alone: each clip's first item is made once and then handed
out again at no cost.

    python benchmarks/dataloader_wait.py [--steps 30] [--workers 0] [--free-loader] [overrides ...]
    python benchmarks/dataloader_wait.py --smoke         # seconds: the CI check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import hydra
import lightning as L
import torch
from omegaconf import open_dict

from idvid import config_packages
from idvid.interop import build_for_training


class WaitTimer(L.Callback):
    """Records, per training step, the wait before it and its own duration."""

    def __init__(self):
        self.waits: list[float] = []
        self.steps: list[float] = []
        self._ended: float | None = None
        self._started = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._started = time.perf_counter()
        if self._ended is not None:
            self.waits.append(self._started - self._ended)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._ended = time.perf_counter()
        self.steps.append(self._ended - self._started)


class FreeItems(torch.utils.data.Dataset):
    """The dataset with one item per clip, made on first use and then returned as it is."""

    def __init__(self, dataset):
        self.dataset, self.items = dataset, {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        if index not in self.items:
            self.items[index] = self.dataset[key]
        return self.items[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--free-loader", action="store_true", help="reuse one item per clip: the wait's floor")
    parser.add_argument("--smoke", action="store_true", help="4 steps after 1 warm-up: a CI check in seconds")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=4")
    options = parser.parse_args()
    if options.smoke:
        options.steps, options.warmup = 4, 1
    warnings.filterwarnings("ignore")

    cfg = config_packages.compose("config", ["experiment=plan_c", "scale=tiny", *options.overrides])
    with open_dict(cfg):
        cfg.data.num_workers = options.workers
    L.seed_everything(cfg.seed)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_for_training(cfg)
    if options.free_loader:
        datamodule.setup()
        datamodule.dataset = FreeItems(datamodule.dataset)
    timer = WaitTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=options.steps, limit_val_batches=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            use_distributed_sampler=False, callbacks=[timer], default_root_dir=tmp,
        )  # fmt: skip
        trainer.fit(model, datamodule=datamodule)
    waits, steps = timer.waits[options.warmup :], timer.steps[options.warmup + 1 :]
    share = sum(waits) / (sum(waits) + sum(steps))
    loader = "free loader (the floor)" if options.free_loader else f"{options.workers} workers"
    print(f"{len(steps)} steps, batch {cfg.data.batch_size}, {loader}, frames {cfg.data.num_frames}")
    print(f"median step {statistics.median(steps) * 1e3:.1f} ms, median wait {statistics.median(waits) * 1e3:.1f} ms")
    print(f"dataloader wait: {share:.1%} of step time (target < 5%)")


if __name__ == "__main__":
    main()
