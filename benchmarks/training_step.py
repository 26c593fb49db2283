"""Training-step time, peak memory, tokens/s and MFU of `plan_c` on a CogVideoX-5B-shaped model.

The model is `hydra_conf/backbone/cogvideox_5b_shape.yaml` (CogVideoX-5B's transformer, VAE and
T5-XXL encoder at full size, random weights: nothing to download) with ConsisID's injectors and
CLIP tower at their released sizes. Each step is the kit's real training step through
Lightning and the chosen trainer preset: VAE-encode the 49 x 480 x 720 clip and the reference,
T5-encode the caption, run the identity conditioner, then the transformer forward and backward
and the optimizer step. The clips are the bundled demo's real clips, resized to the target size
and repeated in time to the target length.

    python benchmarks/training_step.py --preset gpu                       # full size, one GPU, bf16
    python benchmarks/training_step.py --preset deepspeed_zero2 --gradient-checkpointing
    python benchmarks/training_step.py --all                              # every preset x checkpointing
    python benchmarks/training_step.py --reduced --preset cpu --check-flops   # CPU: proves it runs

FLOP count (written down, as MFU depends on it). Model FLOPs of one training step = 3 x the
forward FLOPs of the trained network (backward = 2 x forward; the recompute of gradient
checkpointing is not counted, as usual for MFU). Forward FLOPs, with S = text + video tokens,
N = video tokens, D = hidden size, a multiply-add = 2 FLOPs:
  - per transformer block: q, k, v, out projections 8 S D^2; attention scores and weighted
    sum 4 S^2 D; feed-forward (D -> 4D -> D) 16 S D^2;
  - per identity cross-attention (every 2nd block in plan_c): q and out projections
    4 N D I and attention 4 N T I, with I = heads x head dim and T = identity tokens;
  - patch embedding and output projection 2 N (C p^2) D each, text projection 2 L_text E D.
Norms, modulation, RoPE and softmax are left out (under 1%). Frozen encoders (VAE, T5, CLIP)
run forward only and are not model FLOPs either, but their time is in the step time.
`--check-flops` compares this count with torch's FlopCounterMode on the real transformer forward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

PRESETS = ("cpu", "gpu", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero2_offload")
# Dense bf16 peak of the accelerators this kit is benchmarked on (per GPU, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

# ConsisID's injector and CLIP tower at their released sizes (ConsisID-preview; ViT-L/14-336).
CONSISID_FULL = [
    "injectors.identity.cross_attn_heads=16",
    "injectors.identity.cross_attn_dim_head=128",
    "injectors.identity.extractor.id_dim=896",  # dlib 128 + CLIP projection 768 (insightface: 512 + 768)
    "injectors.identity.extractor.vit_dim=1024",
    "injectors.identity.extractor.depth=10",
    "injectors.identity.extractor.dim_head=64",
    "injectors.identity.extractor.heads=16",
    "injectors.identity.extractor.num_queries=32",
    "injectors.identity.extractor.output_dim=2048",
    "injectors.identity.extractor.ff_mult=4",
    "conditioners.identity.vit_layers=[4,8,12,16,20]",
    "conditioners.identity.clip.config.hidden_size=1024",
    "conditioners.identity.clip.config.intermediate_size=4096",
    "conditioners.identity.clip.config.num_hidden_layers=24",
    "conditioners.identity.clip.config.num_attention_heads=16",
    "conditioners.identity.clip.config.image_size=336",
    "conditioners.identity.clip.config.patch_size=14",
    "conditioners.identity.clip.config.projection_dim=768",
]
# --reduced: the same code path at a size two CPU cores run in seconds (full width, 2 blocks).
REDUCED = [
    "backbone.transformer.num_layers=2",
    "backbone.transformer.sample_frames=9",
    "backbone.transformer.sample_height=12",
    "backbone.transformer.sample_width=18",
    "backbone.text_encoder.num_layers=1",
    "backbone.text_encoder.d_ff=1024",
    "backbone.text_encoder.num_heads=8",
    "backbone.text_encoder.d_kv=32",
    "backbone.vae.block_out_channels=[16,16,16,16]",
    "backbone.vae.layers_per_block=1",
    "backbone.vae.norm_num_groups=8",
    "injectors.identity.extractor.depth=5",
    "conditioners.identity.clip.config.num_hidden_layers=5",
    "conditioners.identity.vit_layers=[1,2,3,4,5]",
]


class LongClips(Dataset):
    """Demo clips resized to H x W and repeated in time to `frames` frames (the demo's are 16 long)."""

    def __init__(self, dataset: Dataset, frames: int):
        self.dataset, self.frames = dataset, frames

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        repeats = -(-self.frames // item["video"].shape[0])
        for key in ("video", "face_mask"):
            item[key] = item[key].repeat(repeats, 1, 1, 1)[: self.frames]
        return item


class StepTimer:
    """Lightning callback: wall time of each training step (device synchronised), after `warmup` steps."""

    def __init__(self, warmup: int):
        import lightning as L

        class _Timer(L.Callback):
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):
                _sync()
                cb.start = time.perf_counter()

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                _sync()
                if batch_idx >= warmup:
                    self.times.append(time.perf_counter() - cb.start)

        self.times: list[float] = []
        self.callback = _Timer()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forward_flops(transformer_config, identity_node, batch: int, frames: int, height: int, width: int) -> float:
    """Model forward FLOPs of the trained network for one step (the count in the module docstring)."""
    c = transformer_config
    d = c["num_attention_heads"] * c["attention_head_dim"]
    p = c["patch_size"]
    n = ((frames - 1) // 4 + 1) * (height // 8 // p) * (width // 8 // p)
    s = n + c["max_text_seq_length"]
    blocks = c["num_layers"] * (24 * s * d**2 + 4 * s**2 * d)
    inner = identity_node["cross_attn_heads"] * identity_node["cross_attn_dim_head"]
    tokens = identity_node["extractor"]["num_queries"]
    identity_blocks = len(range(0, c["num_layers"], 2))
    identity = identity_blocks * (4 * n * d * inner + 4 * n * tokens * inner)
    edges = 2 * n * (c["in_channels"] * p * p) * d + 2 * n * d * (c["out_channels"] * p * p)  # in: widened
    edges += 2 * c["max_text_seq_length"] * c["text_embed_dim"] * d
    return float(batch * (blocks + identity + edges))


def counted_transformer_flops(module, batch: dict) -> tuple[float, float]:
    """(FlopCounterMode's count, this script's count) of one transformer forward at the batch's size."""
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(module.backbone.transformer.config)
    video = batch["video"]
    b, f, _, h, w = video.shape
    latents = torch.zeros(b, (f - 1) // 4 + 1, config["in_channels"], h // 8, w // 8)
    text = torch.zeros(b, config["max_text_seq_length"], config["text_embed_dim"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # diffusers' forward: no injectors
        module.backbone.transformer(latents, text, torch.zeros(b, dtype=torch.long))
    no_identity = {"cross_attn_heads": 0, "cross_attn_dim_head": 0, "extractor": {"num_queries": 0}}
    return float(counter.get_total_flops()), forward_flops(config, no_identity, b, f, h, w)


def compose(overrides: list[str]):
    from idvid import config_packages

    return config_packages.compose("config", overrides)


def run_one(args) -> dict:
    import hydra
    import lightning as L

    overrides = [
        "experiment=plan_c",
        "backbone=cogvideox_5b_shape",
        f"trainer={args.preset}",
        f"backbone.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "model.validation.sample=false",
        "model.validation.loss_quantiles=[]",
        f"data.batch_size={args.batch_size}",
        "data.num_frames=9",
        f"data.height={args.height}",
        f"trainer.default_root_dir={tempfile.mkdtemp(prefix='idvid-bench-')}",
        f"data.width={args.width}",
        *CONSISID_FULL,
        *(REDUCED if args.reduced else []),
        *args.overrides,
    ]
    cfg = compose(overrides)
    L.seed_everything(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    clips = LongClips(datamodule.dataset, args.frames)
    from idvid.data.datamodule import collate

    sampler = RandomSampler(clips, replacement=True, num_samples=10**6)
    loader = DataLoader(clips, batch_size=args.batch_size, sampler=sampler, collate_fn=collate, num_workers=2)
    module = hydra.utils.instantiate(cfg.model)
    timer = StepTimer(args.warmup)
    trainer_cfg = dict(
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[timer.callback], **trainer_cfg)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)

    world = trainer.world_size
    step = sorted(timer.times)[len(timer.times) // 2]  # median
    identity_node = dict(module.hparams["injectors"]["identity"])
    flops = (
        3
        * world
        * forward_flops(
            dict(module.backbone.transformer.config),
            identity_node,
            args.batch_size,
            args.frames,
            args.height,
            args.width,
        )
    )
    patch = module.backbone.transformer.config.patch_size
    video_tokens = ((args.frames - 1) // 4 + 1) * (args.height // 8 // patch) * (args.width // 8 // patch)
    result = {
        "preset": args.preset,
        "gradient_checkpointing": args.gradient_checkpointing,
        "size": "reduced" if args.reduced else "full",
        "video": f"{args.frames}x{args.height}x{args.width}",
        "global_batch": args.batch_size * world,
        "trained_params_M": round(sum(p.numel() for p in module.trainable_parameters()) / 1e6, 1),
        "step_time_s": round(step, 3),
        "video_tokens_per_s": round(video_tokens * args.batch_size * world / step, 1),
        "model_tflops_per_step": round(flops / 1e12, 3),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        result["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in result["device"]), None)
        if peak:
            result["mfu"] = round(flops / world / step / (peak * 1e12), 3)
    else:
        result["peak_rss_GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        if args.peak_tflops:
            result["mfu"] = round(flops / step / (args.peak_tflops * 1e12), 4)
    if args.check_flops:
        counted, analytic = counted_transformer_flops(module.cpu(), next(iter(loader)))
        result["flops_check_counted_over_analytic"] = round(counted / analytic, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="gpu")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reduced", action="store_true", help="2 blocks, 9x96x144: a CPU check that it runs")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    parser.add_argument("--check-flops", action="store_true", help="compare the FLOP formula with FlopCounterMode")
    parser.add_argument("--all", action="store_true", help="run every preset with and without checkpointing")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.devices=2")
    args = parser.parse_args()
    if args.reduced and (args.frames, args.height, args.width) == (49, 480, 720):
        args.frames, args.height, args.width = 9, 96, 144
    if not args.all:
        print(json.dumps(run_one(args)))
        return
    # One process per configuration: presets differ in launchers and process groups.
    base = [a for a in sys.argv[1:] if a not in ("--all",) and not a.startswith("--preset")]
    for preset in PRESETS:
        for checkpointing in ("--gradient-checkpointing", "--no-gradient-checkpointing"):
            command = [sys.executable, __file__, "--preset", preset, checkpointing, *base]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode == 0 and lines:
                print(lines[-1], flush=True)
            else:
                reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                print(json.dumps({"preset": preset, "checkpointing": checkpointing, "failed": reason[:300]}))


if __name__ == "__main__":
    main()
