"""experiment=magicme_id: ID tokens learned on the demo's astronaut, loss inside the mask, placeholder prompts."""

from __future__ import annotations

import math

import cv2
import hydra
import lightning as L
import pytest
import skimage.data
import torch
from idvid_magicme.data import OnePersonDataModule, placeholder_caption
from omegaconf import OmegaConf

from idvid import config_packages
from idvid.errors import ConfigError
from idvid.interop import load_module, save_module
from idvid.randomness import BatchRandom
from idvid.training.module import IdentityVideoModule
from idvid.verbs import ablate
from idvid.verbs.fit import fit
from tests.conftest import compose_config


def test_placeholder_goes_before_the_subject_word():
    caption = "a person smiles at the camera"
    assert placeholder_caption(caption, "<id>", "person") == "a <id> person smiles at the camera"
    assert placeholder_caption("the camera pans", "<id>", "person") == "<id>, the camera pans"
    assert placeholder_caption("a <id> person", "<id>", "person") == "a <id> person"


def test_one_person_data_is_the_astronauts_clip_with_placeholder_captions():
    data = OnePersonDataModule(identity="astronaut-0", num_frames=9, height=32, width=32)
    data.setup()
    assert [e["identity"] for e in data.dataset.entries] == ["astronaut-0"]
    assert data.dataset[0]["caption"].startswith("a <id> person")
    with pytest.raises(ConfigError, match="(?s)data.identity='nobody' has no clips.*astronaut-0"):
        OnePersonDataModule(identity="nobody").setup()


@pytest.mark.slow
def test_magicme_id_fits_two_steps_and_learns_only_the_id_tokens(tmp_path, caplog):
    overrides = ["experiment=magicme_id", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    overrides += ["callbacks.checkpoint.every_n_train_steps=2", "model.validation.num_inference_steps=1"]
    cfg = compose_config(overrides, run_dir=tmp_path)
    assert cfg.model.trainable == "injectors" and cfg.recipe.subject_mask.name == "magicme.subject_mask_loss"
    with caplog.at_level("INFO"):
        loss = fit(cfg)
    assert loss is not None and math.isfinite(loss)
    assert "using the head mask (landmark hull grown 1.5x)" in caplog.text  # which mask the run used
    # validation sampled the placeholder caption (a model without the tokens would refuse "a <id> person ...")
    assert (tmp_path / "samples" / "step000002_astronaut-0.mp4").is_file()
    trained = load_module(tmp_path / "checkpoints" / "last.ckpt")
    L.seed_everything(0)  # fit builds its model right after seeding with the config's seed
    fresh = hydra.utils.instantiate(compose_config(["experiment=magicme_id"]).model)
    fresh_state, trained_state = fresh.state_dict(), trained.state_dict()
    changed = {k for k in trained_state if not torch.equal(trained_state[k], fresh_state[k])}
    assert changed == {"plan.injectors.id_tokens.vectors"}
    prompt = ["a <id> person smiles"]
    assert not torch.equal(trained.backbone.encode_text(prompt), fresh.backbone.encode_text(prompt))


def test_lora_trains_with_the_id_tokens_and_text_is_never_cached(tmp_path, monkeypatch):
    cfg = compose_config(["experiment=magicme_id", "model.trainable=lora", f"model.feature_cache={tmp_path}"])
    L.seed_everything(0)
    module = hydra.utils.instantiate(cfg.model).train()
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert "plan.injectors.id_tokens.vectors" in trainable
    lora = trainable - {"plan.injectors.id_tokens.vectors"}
    assert lora and all(".lora_" in name for name in lora)

    def cached_text(*args):
        raise AssertionError("text embeddings were read from the cache while the ID tokens train")

    monkeypatch.setattr("idvid.training.feature_cache.FeatureCache.encode_text", cached_text)
    data = OnePersonDataModule(identity="astronaut-0", num_frames=9, height=32, width=32)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    loss = module.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    loss.backward()
    assert module.plan.injectors["id_tokens"].vectors.grad.abs().sum() > 0


def test_the_magicme_sweep_has_its_metrics_as_columns_and_samples_with_the_id_tokens(tmp_path, monkeypatch):
    cfg = config_packages.compose("ablate", ["sweep=magicme_vcd"])
    assert list(cfg.experiments) == ["baseline", "magicme_id"]
    metrics = [column.metric for column in cfg.report.columns]
    assert metrics[:5] == ["clip_i", "dino", "clip_t", "smoothness_clip", "smoothness_dino"]
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["eval_set"].update(steps=1, frames=9, height=32, width=32)
    folder = tmp_path / "magicme_id"
    L.seed_everything(0)
    save_module(
        hydra.utils.instantiate(compose_config(["experiment=magicme_id"]).model),
        folder / "fit" / "checkpoints" / "last.ckpt",
    )
    refs = tmp_path / "refs"
    refs.mkdir()
    cv2.imwrite(str(refs / "astronaut_s0.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("astronaut_s0\ta person smiles\n")
    sampled = []
    generate = IdentityVideoModule.generate
    monkeypatch.setattr(
        IdentityVideoModule,
        "generate",
        lambda self, batch, *a, **k: sampled.append(batch["caption"]) or generate(self, batch, *a, **k),
    )
    ablate.sample_eval_set(folder, refs, prompts, ["astronaut_s0"], cfg, cfg["prompt_rewrites"]["magicme_id"])
    assert sampled == [["a <id> person smiles"]]  # the ID tokens sampled; the metrics read prompts.tsv as it is
    assert (folder / "videos" / "astronaut_s0.mp4").is_file()
