"""IdentityVideoDataModule: resume offset, batching, fixed validation."""

from __future__ import annotations

from itertools import islice
from types import SimpleNamespace

import lightning
import pytest
import torch

from idvid.data.datamodule import IdentityVideoDataModule


def test_train_loader_resumes_from_trainer_step(demo_manifest):
    dm = IdentityVideoDataModule(str(demo_manifest), batch_size=2)
    dm.trainer = SimpleNamespace(global_step=5, accumulate_grad_batches=3, world_size=2, global_rank=1)
    loader = dm.train_dataloader()
    assert (loader.sampler.start, loader.sampler.rank, loader.sampler.world_size) == (5 * 2 * 3 * 2, 1, 2)
    batch = next(iter(loader))
    assert batch["video"].shape == (2, 9, 3, 64, 64) and batch["ref_embedding"].shape == (2, 128)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 2
    assert batch["has_cross_ref"].shape == (2,)


def test_no_trainer_starts_at_zero(demo_manifest):
    dm = IdentityVideoDataModule(str(demo_manifest))
    assert dm.sampler_start() == (0, 0, 1)


def test_batches_do_not_depend_on_worker_count(demo_manifest):
    batches = []
    for workers in (0, 2):
        dm = IdentityVideoDataModule(str(demo_manifest), batch_size=2, num_workers=workers, height=32, width=32)
        batches.append(list(islice(iter(dm.train_dataloader()), 2)))
    for a, b in zip(*batches):
        assert a["id"] == b["id"]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["cross_ref_image"], b["cross_ref_image"])


def test_val_loader_is_one_fixed_batch(demo_manifest):
    dm = IdentityVideoDataModule(str(demo_manifest), num_val_items=3)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 1 and first[0]["id"] == ["astronaut-0", "t1-0", "t1-1"]
    assert torch.equal(first[0]["video"], second[0]["video"])


def test_the_clip_cache_holds_as_many_clips_as_it_is_given(demo_manifest):
    """Each clip is decoded once while it stays in the cache; a cache smaller than the set decodes again."""
    dm = IdentityVideoDataModule(str(demo_manifest), max_cached_clips=3)
    dm.setup("fit")
    for index in range(len(dm.dataset)):
        dm.dataset[index]
    assert dm.dataset.max_cached_clips == 3 and len(dm.dataset._cache) == 3


def test_default_manifest_is_the_demo(demo_cache, demo_manifest, monkeypatch):
    monkeypatch.setenv("IDVID_CACHE", str(demo_cache))
    dm = IdentityVideoDataModule(None)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.dataset) == 7


class RecordingModule(lightning.LightningModule):
    """Minimal module that remembers which items each training step saw."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        starts = batch["frame_indices"][:, 0].tolist()
        self.seen.append((tuple(batch["id"]), tuple(starts), tuple(batch["ref_frame"].tolist())))
        return (self.weight * batch["video"].mean()).sum() + self.weight.pow(2).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(manifest, root, max_steps, ckpt_path=None):
    module = RecordingModule()
    trainer = lightning.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        val_check_interval=2,  # the train loader is infinite: validate every N batches
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the sampler shards by rank itself
    )
    trainer.fit(module, IdentityVideoDataModule(str(manifest), batch_size=2, height=32, width=32), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.filterwarnings("ignore")
def test_resumed_training_sees_the_same_items(demo_manifest, tmp_path):
    full, _ = fit(demo_manifest, tmp_path, max_steps=4)
    first, trainer = fit(demo_manifest, tmp_path, max_steps=2)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    rest, _ = fit(demo_manifest, tmp_path, max_steps=4, ckpt_path=tmp_path / "step2.ckpt")
    assert len(full.seen) == 8  # 4 optimizer steps x 2 accumulated batches
    assert first.seen + rest.seen == full.seen
