"""LightningDataModule wiring the dataset and the resumable sampler together."""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
from torch.utils.data import DataLoader

from idvid.data.dataset import IdentityVideoDataset
from idvid.data.sampler import ResumableRandomSampler


def collate(items: list[dict]) -> dict:
    """Stack tensors along a new batch dim; keep everything else (captions, ids) as lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


class IdentityVideoDataModule(lightning.LightningDataModule):
    """Train/val loaders over a clip manifest; manifest=None uses the bundled demo data set.

    The train loader is infinite (no length): run the trainer with max_steps, an integer
    val_check_interval and use_distributed_sampler=False, since the sampler shards by rank itself.
    """

    def __init__(
        self,
        manifest: str | None = None,
        num_frames: int = 9,
        frame_stride: int = 1,
        height: int = 64,
        width: int = 64,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        num_val_items: int = 2,
        audio_mel_bins: int = 80,
        audio_mel_frames: int | None = None,
        max_cached_clips: int = 32,
    ):
        super().__init__()
        self.manifest = manifest
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.height, self.width = height, width
        self.batch_size, self.num_workers = batch_size, num_workers
        self.seed, self.num_val_items = seed, num_val_items
        self.audio_mel_bins, self.audio_mel_frames = audio_mel_bins, audio_mel_frames
        self.max_cached_clips = max_cached_clips
        self.dataset: IdentityVideoDataset | None = None

    def prepare_data(self) -> None:
        # Runs on one process per node: build the demo once before the ranks read it.
        if self.manifest is None:
            from idvid.demo import build_demo

            build_demo()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        manifest: str | Path = self.manifest
        if manifest is None:
            from idvid.demo import build_demo

            manifest = build_demo()  # returns at once when already built
        self.dataset = IdentityVideoDataset(
            manifest,
            self.num_frames,
            self.frame_stride,
            self.height,
            self.width,
            seed=self.seed,
            audio_mel_bins=self.audio_mel_bins,
            audio_mel_frames=self.audio_mel_frames,
            max_cached_clips=self.max_cached_clips,
        )

    def sampler_start(self) -> tuple[int, int, int]:
        """(start draw, rank, world_size) for the train sampler, resuming from the trainer's step."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 1
        world_size = int(trainer.world_size)
        start = int(trainer.global_step) * self.batch_size * int(trainer.accumulate_grad_batches) * world_size
        return start, int(trainer.global_rank), world_size

    def train_dataloader(self) -> DataLoader:
        self.setup()
        start, rank, world_size = self.sampler_start()
        sampler = ResumableRandomSampler(
            len(self.dataset), seed=self.seed, start=start, rank=rank, world_size=world_size
        )
        return self._loader(sampler, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        # Fixed items: int keys give draw = index, so validation sees the same frames every time.
        self.setup()
        count = min(self.num_val_items, len(self.dataset))
        if count < 1:
            raise ValueError(f"num_val_items must be >= 1, got {self.num_val_items}")
        return self._loader(list(range(count)), count)

    def _loader(self, sampler, batch_size: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )
