"""Cost of a Stand-In-style reference at sampling: the same model sampling with and without reference tokens.

For each backbone, one model of experiment ``standin`` (the reference face's latent as clean,
``reference_isolated`` tokens at frame -1 with a LoRA on their q/k/v) samples a video of the
backbone's default (demo) size with the reference, its keys and values cached once per video
(``kv_cache``), and with no reference at all (an empty plan: the video path alone). The runs alternate,
one video each at a time, so machine noise hits both alike. Prints the median of each, the median of
the per-pair ratios (target: with / without <= 1.15 on every backbone) and, for comparison, the
ratio without the cache (the reference recomputed at every step and guidance branch).

    python benchmarks/reference_sampling.py [--steps 50] [--repeats 5] [--backbones cogvideox_tiny wan_tiny]
    python benchmarks/reference_sampling.py --smoke      # seconds: the CI check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import hydra
import torch

from idvid import config_packages
from idvid.injection import InjectionPlan
from idvid.randomness import BatchRandom
from idvid.sampling.sampler import sample_latents


def standin_module(backbone: str):
    cfg = config_packages.compose("config", ["experiment=standin", "scale=tiny", f"backbone={backbone}"])
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model).eval()
    for adapter in module.plan.injectors["reference"].lora.values():  # a trained-looking LoRA, not zeros
        torch.nn.init.normal_(adapter.up.weight, std=0.02)
    return module


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(backbone: str, steps: int, repeats: int) -> dict[str, float]:
    module = standin_module(backbone)
    model = module.backbone
    shape = model.latent_shape(1, *model.default_video_size)
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 3, *model.default_video_size[1:], generator=generator) * 2 - 1
    conditions = module.conditions_for({"ref_image": reference, "ref_kps_image": reference}, BatchRandom(generator))
    text = model.encode_text(["a person smiling at the camera"])
    negative = model.encode_text([""])
    empty = InjectionPlan({})

    def sample(plan, conditions, cache=True):
        return lambda: sample_latents(
            model,
            plan,
            conditions,
            text,
            negative,
            shape,
            num_inference_steps=steps,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(0),
            use_reference_cache=cache,
        )

    with torch.no_grad():
        runs = {
            "without": sample(empty, {}),
            "with": sample(module.plan, conditions),
            "with, no cache": sample(module.plan, conditions, cache=False),
        }
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
    ratio = statistics.median(w / o for w, o in zip(times["with"], times["without"]))
    uncached = statistics.median(w / o for w, o in zip(times["with, no cache"], times["without"]))
    return {
        "without_s": statistics.median(times["without"]),
        "with_s": statistics.median(times["with"]),
        "ratio": ratio,
        "ratio_uncached": uncached,
        "video_tokens": shape[1] * (shape[3] // 2) * (shape[4] // 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="timed triples (medians reported)")
    parser.add_argument("--backbones", nargs="+", default=["cogvideox_tiny", "wan_tiny"])
    parser.add_argument("--smoke", action="store_true", help="2 steps, 1 repeat: a CI check in seconds")
    options = parser.parse_args()
    if options.smoke:
        options.steps, options.repeats = 2, 1
    for backbone in options.backbones:
        result = measure(backbone, options.steps, options.repeats)
        print(
            f"{backbone}: {options.steps} steps, {result['video_tokens']} video tokens: without reference "
            f"{result['without_s']:.3f} s, with {result['with_s']:.3f} s"
        )
        print(f"{backbone}: ratio with / without reference: {result['ratio']:.3f} (target <= 1.15)")
        print(f"{backbone}: ratio without the K/V cache: {result['ratio_uncached']:.3f}")


if __name__ == "__main__":
    main()
