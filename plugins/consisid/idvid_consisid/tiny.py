"""Tiny random ConsisID pipelines, built offline, for tests, benchmarks and trying the tools.

``write_tiny_pipeline(root)`` writes a diffusers-layout ConsisID pipeline folder
(``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) whose sizes fit
the demo's conditioners (id_cond 160 = dlib 128 + tiny CLIP 32; 5 ViT depths of width 32) and
the demo's 64x64, 9-frame clips. Weights are random: this is plumbing, not a model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, ConsisIDTransformer3DModel
from transformers import T5Config, T5EncoderModel

from idvid.backbones.demo_tokenizer import build_demo_tokenizer

TINY_CONSISID = dict(
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


def write_tiny_pipeline(root: Path, seed: int = 0, **transformer_overrides) -> ConsisIDTransformer3DModel:
    """Write the folder and return its transformer (in eval mode)."""
    root = Path(root)
    torch.manual_seed(seed)
    transformer = ConsisIDTransformer3DModel(**{**TINY_CONSISID, **transformer_overrides})
    transformer.save_pretrained(root / "transformer")
    AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),
        latent_channels=16,
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=64,
        sample_width=64,
    ).save_pretrained(root / "vae")
    tokenizer = build_demo_tokenizer(transformer.config.max_text_seq_length)
    tokenizer.save_pretrained(root / "tokenizer")
    T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=transformer.config.text_embed_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
        )
    ).save_pretrained(root / "text_encoder")
    CogVideoXDPMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    ).save_pretrained(root / "scheduler")
    return transformer.eval()
