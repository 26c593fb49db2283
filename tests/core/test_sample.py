"""The sample verb and fine-tuning from a kit checkpoint (init_from)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import hydra
import lightning as L
import numpy as np
import pytest
import skimage.data
import torch

from idvid.conditioning import SAMPLING_BATCH_KEYS
from idvid.data.video_io import read_mp4
from idvid.interop import build_for_training, load_module, save_module
from idvid.verbs.sample import reference_batch, sample

from ..backbones.test_backbone_contract import TINY_BACKBONES
from ..conftest import compose_config


@pytest.fixture(scope="module", params=[tiny.config for tiny in TINY_BACKBONES])
def plan_c_checkpoint(request, tmp_path_factory):
    cfg = compose_config(["experiment=plan_c", f"backbone={request.param}"])
    L.seed_everything(0)
    module = hydra.utils.instantiate(cfg.model)
    with torch.no_grad():  # the widened face-latent channels start at zero; make them matter
        module.backbone.input_layer.weight[:, 16:].normal_(0, 0.1)
    return save_module(module, tmp_path_factory.mktemp("ckpt") / "plan_c.ckpt")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_reference_batch_has_the_training_inputs(astronaut):
    batch = reference_batch(astronaut, "a woman smiling", 64, 64)
    assert sorted(batch) == sorted(SAMPLING_BATCH_KEYS)  # what conditioners may read at sampling time
    assert batch["ref_image"].shape == batch["ref_kps_image"].shape == (1, 3, 64, 64)
    assert batch["ref_embedding"].shape == (1, 128)
    assert batch["ref_image"].min() >= -1 and batch["ref_image"].max() <= 1
    assert (batch["ref_image"][0, :, 0, 0] == 1).all()  # whitened background in the corner
    assert batch["caption"] == ["a woman smiling"]


def test_no_face_and_unreadable_image_are_clear_errors(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    with pytest.raises(ValueError, match="No face found in .*blank.png"):
        reference_batch(blank, "x", 64, 64)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match="Cannot read the reference image .*broken.jpg"):
        reference_batch(tmp_path / "broken.jpg", "x", 64, 64)


@pytest.mark.needs_plugin("idvid_consisid")
def test_sampling_is_seeded_and_prepares_identity_once_per_video(plan_c_checkpoint, astronaut):
    module = load_module(plan_c_checkpoint).eval()
    extractor = module.plan.injectors["identity"].local_facial_extractor
    calls = []
    extractor.register_forward_hook(lambda *_: calls.append(1))
    batch = reference_batch(astronaut, "a woman smiling", 64, 64)
    first = module.generate(batch, 9, 64, 64, num_inference_steps=4, guidance_scale=6.0, seed=3)
    assert len(calls) == 1  # not once per denoising step
    again = module.generate(batch, 9, 64, 64, num_inference_steps=4, guidance_scale=6.0, seed=3)
    other = module.generate(batch, 9, 64, 64, num_inference_steps=4, guidance_scale=6.0, seed=4)
    assert first.shape == (1, 9, 3, 64, 64)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # The reference matters: another person gives another video.
    flipped = dict(batch, ref_image=batch["ref_image"].flip(-1), ref_embedding=-batch["ref_embedding"])
    assert not torch.equal(first, module.generate(flipped, 9, 64, 64, 4, 6.0, seed=3))


@pytest.mark.needs_plugin("idvid_consisid")
def test_sample_writes_an_mp4_at_the_models_default_size(plan_c_checkpoint, astronaut, tmp_path):
    out = sample(str(plan_c_checkpoint), str(astronaut), "a woman smiling", str(tmp_path / "v.mp4"), steps=2)
    assert read_mp4(out).shape == (9, 64, 64, 3)  # the tiny transformer's sample_frames and 8x8 latent grid


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.slow
def test_sample_command_line(plan_c_checkpoint, astronaut, tmp_path):
    command = [
        sys.executable,
        "-m",
        "idvid",
        "sample",
        str(plan_c_checkpoint),
        "--image",
        str(astronaut),
        "--prompt",
        "a woman smiling",
        "--out",
        str(tmp_path / "cli.mp4"),
        "--steps",
        "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sampling" in result.stderr  # the progress bar
    assert read_mp4(tmp_path / "cli.mp4").shape == (9, 64, 64, 3)


@pytest.mark.needs_plugin("idvid_consisid")
def test_init_from_takes_architecture_and_weights_from_the_checkpoint(plan_c_checkpoint):
    saved = load_module(plan_c_checkpoint)
    # A different experiment and recipe in the config: the architecture still comes from the checkpoint.
    cfg = compose_config(["experiment=plan_a", "recipe=none", f"init_from={plan_c_checkpoint}"])
    module = build_for_training(cfg)
    assert set(module.plan.injectors) == {"face_latent", "identity"}
    assert len(module.recipe) == 0 and saved.recipe.steps["cross_face"].probability == 0.5
    expected = saved.state_dict()
    for key, value in module.state_dict().items():
        assert torch.equal(value, expected[key]), key
    with pytest.raises(FileNotFoundError, match="init_from=.*nowhere.ckpt does not exist"):
        build_for_training(compose_config(["init_from=/nowhere.ckpt"]))
