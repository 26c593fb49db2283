"""Kit sampling vs diffusers' ConsisIDPipeline, 50 steps, the same tiny components.

The kit prepares the identity tokens (the local facial extractor) once per video; the
official pipeline's transformer recomputes them at every denoising step. Both runs use the
same VAE, text encoder, scheduler, weights, reference and identity features. Prints both
times and the ratio (target: kit faster).

    python benchmarks/consisid_sampling.py [--steps 50] [--vit-tokens 257]
    python benchmarks/consisid_sampling.py --smoke      # seconds: the CI check that it runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import ConsisIDPipeline
from idvid_consisid.tiny import write_tiny_pipeline

from idvid.interop import load_module
from idvid.verbs.convert import convert

# The released LFE's depth (10 perceiver layers) and query count (32) on the demo's widths.
LFE = dict(LFE_depth=10, LFE_num_heads=4, LFE_num_id_token=5, LFE_num_querie=32, LFE_ff_mult=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--vit-tokens", type=int, default=257, help="ViT tokens per depth (ViT-L/14-336: 577)")
    parser.add_argument("--smoke", action="store_true", help="2 steps, 17 ViT tokens: a CI check in seconds")
    options = parser.parse_args()
    if options.smoke:
        options.steps, options.vit_tokens = 2, 17

    with tempfile.TemporaryDirectory() as tmp:
        reference = write_tiny_pipeline(Path(tmp), **LFE)
        checkpoint, _ = convert("diffusers-consisid", tmp, f"{tmp}/kit.ckpt", [])
        module = load_module(checkpoint).eval()
    backbone = module.backbone

    g = torch.Generator().manual_seed(0)
    face = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    id_cond = torch.randn(1, 160, generator=g)
    id_vit_hidden = [torch.randn(1, options.vit_tokens, 32, generator=g) for _ in range(5)]
    prompt = "a person smiling at the camera"

    pipe = ConsisIDPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        transformer=reference,
        scheduler=backbone.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)

    def run_pipeline():
        return pipe(
            image=(face + 1) / 2,
            prompt=prompt,
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=options.steps,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            id_cond=id_cond,
            id_vit_hidden=id_vit_hidden,
            max_sequence_length=16,
        ).frames

    # The kit takes the same identity features; its conditioners would compute them from the photo.
    # (Same signature as TrainingModule.conditions_for; the posterior samples are drawn through `random`.)
    module.conditions_for = lambda batch, random, cache=None: {
        "face_latent": backbone.encode_video(face[:, None], random),
        "kps_latent": backbone.encode_video(face[:, None], random),
        "id_cond": id_cond,
        "id_vit_hidden": id_vit_hidden,
    }

    # A sampling batch has the reference's entries (generate checks that the conditioners can run on it);
    # the features above stand for what the conditioners compute from them.
    batch = {"caption": [prompt], "ref_image": face, "ref_kps_image": face, "ref_embedding": torch.zeros(1, 128)}

    def run_kit():
        return module.generate(batch, 9, 64, 64, options.steps, 6.0, seed=0)

    timings = {}
    for name, run in (("pipeline", run_pipeline), ("kit", run_kit)):
        with torch.no_grad():
            run()  # warm-up
            start = time.perf_counter()
            run()
            timings[name] = time.perf_counter() - start
    print(f"{options.steps} steps, 9 frames of 64x64, LFE over 5 x {options.vit_tokens} ViT tokens, CPU")
    print(f"diffusers ConsisIDPipeline (LFE every step): {timings['pipeline']:.2f} s")
    print(f"kit sampling (LFE once per video):           {timings['kit']:.2f} s")
    print(f"ratio kit / pipeline: {timings['kit'] / timings['pipeline']:.3f} (target < 1)")


if __name__ == "__main__":
    main()
