"""The three MegActor-Sigma stages: each starts from the previous one's checkpoint (init_from adds its modules),
stage 3 trains only the temporal modules, stage 1 trains on the demo and resumes exactly."""

from __future__ import annotations

import math

import hydra
import lightning as L
import pytest
import torch
from idvid_megactor import AudioAttention, ReferenceAttention, TemporalAttention, WhisperAudio

from idvid.backbones.base import Backbone
from idvid.errors import ConfigError
from idvid.interop import build_for_training, save_module
from idvid.randomness import BatchRandom
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def demo_batch_with_audio():
    """A demo batch with the demo clips' audio (stage 2's data: the tiny Whisper's 200-frame window)."""
    datamodule = hydra.utils.instantiate(compose_config(["experiment=megactor_stage2_mixed"]).data)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["audio_mel"].shape[-1] == 200 and batch["has_audio"].all() and batch["audio_mel"].abs().sum() > 0
    return batch


def stage(experiment, init_from=None, *overrides):
    cfg = compose_config([f"experiment={experiment}", *([f"init_from={init_from}"] if init_from else []), *overrides])
    L.seed_everything(0)
    return build_for_training(cfg)


def train_steps(module, batch, steps=2):
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
    for step in range(steps):
        loss = module.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(step)))["loss"]
        assert math.isfinite(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_each_stage_starts_from_the_previous_one_and_stage_three_trains_only_the_temporal_modules(
    tmp_path, demo_batch_with_audio
):
    first = stage("megactor_stage1_visual")
    assert [type(i) for i in first.plan.token_injectors] == [ReferenceAttention] and "audio" not in first.conditioners
    reference = first.conditioners["reference"].transformer
    before = [p.detach().clone() for p in reference.parameters()]
    train_steps(first, demo_batch_with_audio, steps=3)
    # the reference transformer trains from stage 1 on (once the reference attention's zero output has moved)
    assert any(not torch.equal(a, b) for a, b in zip(before, reference.parameters()))
    save_module(first, tmp_path / "stage1.ckpt")

    second = stage("megactor_stage2_mixed", tmp_path / "stage1.ckpt")
    assert isinstance(second.conditioners["audio"], WhisperAudio)
    assert isinstance(second.plan.injectors["audio"], AudioAttention)
    kept = {k: v for k, v in first.state_dict().items()}
    for key, value in second.state_dict().items():
        if key in kept:
            assert torch.equal(value, kept[key]), key  # stage 1's weights, as trained
    outputs = [p for n, p in second.plan.injectors["audio"].named_parameters() if "to_out" in n]
    assert outputs and all(not p.any() for p in outputs)  # the audio attention starts as a no-op
    train_steps(second, demo_batch_with_audio)
    save_module(second, tmp_path / "stage2.ckpt")

    third = stage("megactor_stage3_motion", tmp_path / "stage2.ckpt")
    assert isinstance(third.plan.injectors["temporal"], TemporalAttention)
    assert third.hparams.trainable == ["temporal"]
    trainable = {n for n, p in third.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("plan.injectors.temporal.") for n in trainable)
    before = {k: v.clone() for k, v in third.state_dict().items()}
    train_steps(third, demo_batch_with_audio)
    after = third.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    # others bit-identical, the reference transformer (conditioners.reference.transformer) included
    assert changed and all(k.startswith("plan.injectors.temporal.") for k in changed)


def test_the_mouth_attention_mask_reaches_the_denoiser_and_changes_the_loss(demo_batch_with_audio, monkeypatch):
    """Face-drop to the eyes: the recipe's mouth-token mask reaches the denoiser's attention, not the reference pass."""
    masks = []
    original = Backbone.video_attention_mask

    def recording(self, injection, token_grid, *args, **kwargs):
        masks.append(original(self, injection, token_grid, *args, **kwargs))
        return masks[-1]

    monkeypatch.setattr(Backbone, "video_attention_mask", recording)
    losses = {}
    for switch in ("true", "false"):
        module = stage(
            "megactor_stage1_visual",
            None,
            "recipe.modality.regions=[eyes]",
            f"recipe.modality.mouth_attention_mask={switch}",
        )
        masks.clear()
        with torch.no_grad():
            losses[switch] = module.compute_loss(demo_batch_with_audio, BatchRandom(torch.Generator().manual_seed(0)))
        if switch == "true":  # two forwards: the reference pass (nothing excluded) and the denoiser (masked)
            assert masks[0] is None and masks[1] is not None and not masks[1].all()
        else:
            assert masks == [None, None]
    assert not torch.equal(losses["true"]["prediction"], losses["false"]["prediction"])


def test_a_later_stage_cannot_widen_the_input_and_trainable_names_injectors(tmp_path):
    save_module(stage("baseline"), tmp_path / "plain.ckpt")
    with pytest.raises(
        ConfigError, match=r"reads 16 channels; this plan's reads 32 \(input_concat injectors \['drive'\]\)"
    ):
        stage("megactor_stage1_visual", tmp_path / "plain.ckpt")
    with pytest.raises(Exception, match=r"model.trainable=\['nope'\].*drive, reference, audio, temporal"):
        stage("megactor_stage3_motion", None, "model.trainable=[nope]")


@pytest.mark.slow
def test_stage_one_trains_on_the_demo_and_resumes_exactly(tmp_path):
    """Modality control, face-drop and augmentations on; the resumed run's losses equal the uninterrupted run's."""
    from tests.core.test_training import run_fit, scalars

    common = [
        "experiment=megactor_stage1_visual",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "callbacks.checkpoint.every_n_train_steps=2",
        "recipe.augmentation.resolution_probability=0.5",
        "recipe.augmentation.resize_probability=0.5",
    ]
    run_fit(tmp_path / "full", *common)
    run_fit(tmp_path / "resumed", *common, f"ckpt_path={tmp_path / 'full' / 'checkpoints' / 'step000002.ckpt'}")
    _, full = scalars(tmp_path / "full", "train/loss")
    _, resumed = scalars(tmp_path / "resumed", "train/loss")
    assert [s for s, _ in full] == [0, 1, 2, 3] and all(math.isfinite(v) for _, v in full)
    assert resumed == full[2:]
