"""Cost of the plugin layer: kit `consisid_preview` vs diffusers' ConsisIDTransformer3DModel, forward+backward.

Both models hold identical weights (the kit model is converted from the diffusers one) and see
identical inputs. Prints the median time of each over several repeats and their ratio
(target: kit / diffusers <= 1.02).

    python benchmarks/consisid_forward_backward.py [--layers 8] [--repeats 7] [--device cpu]
    python benchmarks/consisid_forward_backward.py --smoke     # seconds: the CI check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import ConsisIDTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from idvid.interop import load_module
from idvid.randomness import BatchRandom
from idvid.verbs.convert import convert


def mid_size_config(layers: int) -> dict:
    # A CogVideoX-shaped model at roughly 1/6 of the 5B width (inner 512 vs 3072), real LFE shape ratios.
    return dict(
        num_attention_heads=8,
        attention_head_dim=64,
        in_channels=32,
        out_channels=16,
        time_embed_dim=128,
        text_embed_dim=256,
        num_layers=layers,
        sample_width=16,
        sample_height=16,
        sample_frames=9,
        max_text_seq_length=32,
        use_rotary_positional_embeddings=True,
        is_train_face=True,
        is_kps=False,
        cross_attn_interval=2,
        cross_attn_dim_head=64,
        cross_attn_num_heads=4,
        LFE_id_dim=160,
        LFE_vit_dim=128,
        LFE_depth=5,
        LFE_dim_head=32,
        LFE_num_heads=4,
        LFE_num_id_token=5,
        LFE_num_querie=32,
        LFE_output_dim=int(512 * 2 / 3),
        LFE_ff_mult=4,
        LFE_num_scale=5,
    )


def timed(step, repeats: int, device: str) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="2 layers, 1 round of 1 repeat: a CI check in seconds")
    options = parser.parse_args()
    rounds = 1 if options.smoke else 3
    if options.smoke:
        options.layers, options.repeats = 2, 1

    torch.manual_seed(0)
    reference = ConsisIDTransformer3DModel(**mid_size_config(options.layers))
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(Path(tmp) / "transformer")
        checkpoint, _ = convert("diffusers-consisid", f"{tmp}/transformer", f"{tmp}/kit.ckpt", [])
        module = load_module(checkpoint)
    reference.to(options.device).train()
    backbone, plan = module.backbone.to(options.device).train(), module.plan.to(options.device).train()

    g = torch.Generator().manual_seed(1)
    batch, frames, size = 1, 3, 16
    config = reference.config
    inputs = dict(
        hidden_states=torch.randn(batch, frames, 32, size, size, generator=g),
        encoder_hidden_states=torch.randn(batch, config.max_text_seq_length, config.text_embed_dim, generator=g),
        timestep=torch.tensor([500]),
        id_cond=torch.randn(batch, config.LFE_id_dim, generator=g),
        id_vit_hidden=[torch.randn(batch, 65, config.LFE_vit_dim, generator=g) for _ in range(config.LFE_num_scale)],
    )
    inputs = {
        k: (v.to(options.device) if torch.is_tensor(v) else [t.to(options.device) for t in v])
        for k, v in inputs.items()
    }
    rotary = get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim,
        crops_coords=((0, 0), (size // 2, size // 2)),
        grid_size=(size // 2, size // 2),
        temporal_size=frames,
        device=options.device,
    )

    def diffusers_step():
        reference.zero_grad(set_to_none=True)
        reference(**inputs, image_rotary_emb=rotary).sample.square().mean().backward()

    def kit_step():
        backbone.zero_grad(set_to_none=True)
        plan.zero_grad(set_to_none=True)
        conditions = {"id_cond": inputs["id_cond"], "id_vit_hidden": inputs["id_vit_hidden"]}
        injection = plan.prepare(conditions, BatchRandom(torch.Generator().manual_seed(0)))
        prediction = backbone(
            inputs["hidden_states"],
            inputs["timestep"],
            inputs["encoder_hidden_states"],
            injection,
            image_rotary_emb=rotary,
        )
        prediction.square().mean().backward()

    # Interleave the two so that machine noise hits both alike.
    diffusers_times, kit_times = [], []
    for _ in range(rounds):
        diffusers_times.append(timed(diffusers_step, options.repeats, options.device))
        kit_times.append(timed(kit_step, options.repeats, options.device))
    d, k = statistics.median(diffusers_times), statistics.median(kit_times)
    params = sum(p.numel() for p in reference.parameters()) / 1e6
    print(
        f"model: {options.layers} layers, {params:.1f} M parameters, {frames}x{size}x{size} latents, {options.device}"
    )
    print(f"diffusers ConsisIDTransformer3DModel forward+backward: {d * 1000:.1f} ms")
    print(f"kit consisid_preview forward+backward:                 {k * 1000:.1f} ms")
    print(f"ratio kit / diffusers: {k / d:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
