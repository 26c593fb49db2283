"""One ConsisID pipeline folder sets up the whole model: convert it, fine-tune, sample, export (command line)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, ConsisIDTransformer3DModel
from transformers import T5Config, T5EncoderModel

from idvid.backbones.demo_tokenizer import build_demo_tokenizer
from idvid.interop import load_module

# Sizes that fit the demo's conditioners (dlib 128 + tiny CLIP 32 = 160; tiny CLIP width 32, 5 depths).
CONSISID = dict(
    num_attention_heads=3,
    attention_head_dim=16,
    in_channels=32,
    out_channels=16,
    time_embed_dim=16,
    text_embed_dim=32,
    num_layers=4,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    max_text_seq_length=16,
    use_rotary_positional_embeddings=True,
    is_train_face=True,
    is_kps=False,
    cross_attn_interval=2,
    cross_attn_dim_head=8,
    cross_attn_num_heads=2,
    LFE_id_dim=160,
    LFE_vit_dim=32,
    LFE_depth=5,
    LFE_dim_head=8,
    LFE_num_heads=2,
    LFE_num_id_token=2,
    LFE_num_querie=4,
    LFE_output_dim=32,
    LFE_ff_mult=2,
    LFE_num_scale=5,
)


def idvid(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "idvid", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ConsisID-tiny")
    torch.manual_seed(0)
    ConsisIDTransformer3DModel(**CONSISID).save_pretrained(root / "transformer")
    AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=64,
        sample_width=64,
    ).save_pretrained(root / "vae")
    tokenizer = build_demo_tokenizer(16)
    tokenizer.save_pretrained(root / "tokenizer")
    T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    ).save_pretrained(root / "text_encoder")
    CogVideoXDPMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    ).save_pretrained(root / "scheduler")
    return root


@pytest.mark.slow
def test_convert_finetune_sample_export(pipeline_folder, tmp_path):
    checkpoint = tmp_path / "consisid.ckpt"
    result = idvid("convert", "--from", "diffusers-consisid", str(pipeline_folder), "--out", str(checkpoint))
    assert f"python -m idvid fit experiment=consisid_preview init_from={checkpoint}" in result.stdout

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
