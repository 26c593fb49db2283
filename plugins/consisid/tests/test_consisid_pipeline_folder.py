"""One ConsisID pipeline folder sets up the whole model: convert it, fine-tune, sample, export (command line)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, ConsisIDTransformer3DModel
from idvid_consisid.tiny import write_tiny_pipeline

from idvid.interop import load_module


def idvid(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "idvid", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ConsisID-tiny")
    write_tiny_pipeline(root)
    return root


@pytest.mark.slow
def test_convert_finetune_sample_export(pipeline_folder, tmp_path):
    checkpoint = tmp_path / "consisid.ckpt"
    result = idvid("convert", "--from", "diffusers-consisid", str(pipeline_folder), "--out", str(checkpoint))
    assert f"python -m idvid fit experiment=consisid_preview scale=tiny init_from={checkpoint}" in result.stdout

    module = load_module(checkpoint)
    assert module.hparams["backbone"]["pretrained"] == str(pipeline_folder.resolve())
    vae = AutoencoderKLCogVideoX.from_pretrained(pipeline_folder / "vae")
    assert torch.equal(module.backbone.vae.encoder.conv_in.conv.weight, vae.encoder.conv_in.conv.weight)
    checkpoint_keys = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("backbone.vae.") for k in checkpoint_keys)  # they come from the folder

    run_dir = tmp_path / "finetune"
    idvid(
        "fit",
        "experiment=consisid_preview",
        "scale=tiny",
        f"init_from={checkpoint}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "model.validation.num_inference_steps=2",
        f"hydra.run.dir={run_dir}",
    )
    tuned = run_dir / "checkpoints" / "last.ckpt"
    assert tuned.is_file()

    photo = tmp_path / "astronaut.png"
    import cv2
    import skimage.data

    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    idvid(
        "sample",
        str(tuned),
        "--image",
        str(photo),
        "--prompt",
        "a woman smiling",
        "--out",
        str(tmp_path / "video.mp4"),
        "--steps",
        "2",
    )
    assert (tmp_path / "video.mp4").stat().st_size > 0

    idvid("export", str(tuned), "--to", "diffusers-consisid", str(tmp_path / "exported"))
    exported = ConsisIDTransformer3DModel.from_pretrained(tmp_path / "exported")
    trained = load_module(tuned)
    assert torch.equal(exported.proj_out.weight, trained.backbone.transformer.proj_out.weight)
    assert torch.equal(
        exported.perceiver_cross_attention[1].to_out.weight,
        trained.plan.injectors["identity"].perceiver_cross_attention[1].to_out.weight,
    )
