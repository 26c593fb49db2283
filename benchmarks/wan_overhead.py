"""Cost of the plugin layer on Wan: the kit's `wan` backbone vs diffusers' WanTransformer3DModel, forward+backward.

Both run the very same transformer object (the kit adapter owns the block loop over diffusers'
submodules; diffusers runs its own forward) on identical inputs, with no injectors: what is
measured is the adapter's loop, its site calls and its layout changes. The two alternate in one
process, one forward+backward each at a time, so machine noise hits both alike; prints the
median of each and the median of the per-pair ratios (target: kit / diffusers <= 1.02).

    python benchmarks/wan_overhead.py                   # mid size: 4 blocks of width 512, 3x16x16 latents
    python benchmarks/wan_overhead.py --layers 8 --width 1536 --device cuda --gradient-checkpointing
    python benchmarks/wan_overhead.py --smoke           # seconds: the CI check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import WanTransformer3DModel

from idvid.backbones.wan import WanBackbone


def backbone_for(width: int, layers: int, heads: int, text_dim: int) -> WanBackbone:
    """A Wan 2.1-shaped backbone (FFN 4.7x as in Wan2.1-1.3B) around random weights, tiny frozen parts."""
    transformer = dict(
        patch_size=[1, 2, 2],
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=int(width * 4.67) // 8 * 8,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )
    vae = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    text_encoder = dict(d_model=text_dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8)
    return WanBackbone(transformer=transformer, vae=vae, text_encoder=text_encoder, max_text_length=32)


def timed(step, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512, help="hidden size (Wan2.1-1.3B: 1536, 14B: 5120)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3, help="latent frames")
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny and 2 pairs: a seconds-long check that it runs")
    options = parser.parse_args()
    if options.smoke:
        options.layers, options.width, options.heads, options.size, options.repeats = 2, 64, 2, 8, 2

    torch.manual_seed(0)
    backbone = backbone_for(options.width, options.layers, options.heads, text_dim=64).to(options.device).train()
    backbone.gradient_checkpointing = options.gradient_checkpointing
    transformer: WanTransformer3DModel = backbone.transformer
    if options.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, options.frames, 16, options.size, options.size, generator=generator).to(options.device)
    text = torch.randn(1, backbone.max_text_length, 64, generator=generator).to(options.device)
    timestep = torch.tensor([500.0], device=options.device)
    diffusers_layout = latents.permute(0, 2, 1, 3, 4).contiguous()  # diffusers' [B, C, F, H, W], made once

    def diffusers_step():
        transformer.zero_grad(set_to_none=True)
        transformer(diffusers_layout, timestep, text, return_dict=False)[0].square().mean().backward()

    def kit_step():
        transformer.zero_grad(set_to_none=True)
        backbone(latents, timestep, text).square().mean().backward()

    for _ in range(2):  # warm-up
        diffusers_step()
        kit_step()
    pairs = [(timed(diffusers_step, options.device), timed(kit_step, options.device)) for _ in range(options.repeats)]
    d = statistics.median(p[0] for p in pairs)
    k = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    params = sum(p.numel() for p in transformer.parameters()) / 1e6
    tokens = options.frames * (options.size // 2) ** 2
    print(
        f"model: {options.layers} blocks of width {options.width}, {params:.1f} M parameters, {tokens} video tokens "
        f"({options.frames}x{options.size}x{options.size} latents), {options.device}, "
        f"gradient checkpointing {'on' if options.gradient_checkpointing else 'off'}"
    )
    print(f"diffusers WanTransformer3DModel forward+backward: {d * 1000:.1f} ms")
    print(f"kit wan backbone forward+backward:                {k * 1000:.1f} ms")
    print(f"ratio kit / diffusers (median of pairs): {ratio:.3f} (target <= 1.02)")


if __name__ == "__main__":
    main()
