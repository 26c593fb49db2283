"""Training-step time, peak memory, tokens/s and MFU of `plan_c` on CogVideoX-5B- and Wan2.1-shaped models.

`--model` picks the backbone, at full size with random weights (nothing to download):
`cogvideox_5b` (`backbone=cogvideox_5b_shape`: CogVideoX-5B's transformer, VAE and T5-XXL, 49 x 480
x 720 clips), `wan2.1_1.3b` and `wan2.1_14b` (`backbone=wan_1_3b_shape` / `wan_14b_shape`: the Wan2.1
T2V transformer, Wan VAE and UMT5-XXL, 81 x 480 x 832 clips), with ConsisID's injectors and CLIP
tower at their released sizes. Each step is the kit's real training step through Lightning and the
chosen trainer preset: VAE-encode the clip and the reference, encode the caption, run the identity
conditioner, then the transformer forward and backward and the optimizer step. The clips are the
bundled demo's real clips, resized to the target size and repeated in time to the target length.

    python benchmarks/training_step.py --preset gpu                       # CogVideoX-5B, one GPU, bf16
    python benchmarks/training_step.py --model wan2.1_14b --preset deepspeed_zero2 --gradient-checkpointing
    python benchmarks/training_step.py --all                              # every preset x checkpointing
    python benchmarks/training_step.py --reduced --preset cpu --check-flops   # CPU: full width, 2 blocks
    python benchmarks/training_step.py --smoke --model wan2.1_1.3b        # seconds: the CI check that it runs

FLOP count (written down, as MFU depends on it). Model FLOPs of one training step = 3 x the
forward FLOPs of the trained network (backward = 2 x forward; the recompute of gradient
checkpointing is not counted, as usual for MFU). Forward FLOPs, with S = text + video tokens,
N = video tokens, D = hidden size, a multiply-add = 2 FLOPs:
  - per CogVideoX block (joint attention over S = text + video tokens): q, k, v, out projections
    8 S D^2; attention scores and weighted sum 4 S^2 D; feed-forward (D -> 4D -> D) 16 S D^2;
  - per Wan block (video self-attention, then text cross-attention over L text tokens, FFN width F):
    self-attention 8 N D^2 + 4 N^2 D; cross-attention q, out 4 N D^2, k, v 4 L D^2, attention
    4 N L D; feed-forward (D -> F -> D) 4 N D F;
  - per identity cross-attention (every 2nd block in plan_c): q and out projections
    4 N D I and attention 4 N T I, with I = heads x head dim and T = identity tokens;
  - patch embedding and output projection 2 N (C p^2) D each, text projection 2 L E D (Wan: + 2 L D^2).
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
from dataclasses import dataclass

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
# --reduced: the same code path at a size a CPU runs (full transformer width, 2 blocks, small encoders).
REDUCED_ENCODERS = [
    "backbone.transformer.num_layers=2",
    "backbone.text_encoder.num_layers=1",
    "backbone.text_encoder.d_ff=1024",
    "backbone.text_encoder.num_heads=8",
    "backbone.text_encoder.d_kv=32",
    "injectors.identity.extractor.depth=5",
    "conditioners.identity.clip.config.num_hidden_layers=5",
    "conditioners.identity.vit_layers=[1,2,3,4,5]",
]
REDUCED_COGVIDEOX = [
    *REDUCED_ENCODERS,
    "backbone.transformer.sample_frames=9",
    "backbone.transformer.sample_height=12",
    "backbone.transformer.sample_width=18",
    "backbone.vae.block_out_channels=[16,16,16,16]",
    "backbone.vae.layers_per_block=1",
    "backbone.vae.norm_num_groups=8",
]
REDUCED_WAN = [
    *REDUCED_ENCODERS,
    "backbone.max_text_length=64",
    "backbone.vae.base_dim=16",
    "backbone.vae.dim_mult=[1,1,1,1]",
    "backbone.vae.num_res_blocks=1",
]


@dataclass(frozen=True)
class ModelShape:
    backbone: str  # hydra_conf/backbone/<backbone>.yaml at full size
    video: tuple[int, int, int]  # frames, height, width the family trains at
    reduced: list[str]  # --reduced overrides
    reduced_video: tuple[int, int, int]
    smoke_backbone: str  # --smoke: the family's tiny demo backbone (seconds, the script's code path only)


MODELS = {
    "cogvideox_5b": ModelShape("cogvideox_5b_shape", (49, 480, 720), REDUCED_COGVIDEOX, (9, 96, 144), "cogvideox_tiny"),
    "wan2.1_1.3b": ModelShape("wan_1_3b_shape", (81, 480, 832), REDUCED_WAN, (9, 96, 160), "wan_tiny"),
    "wan2.1_14b": ModelShape("wan_14b_shape", (81, 480, 832), REDUCED_WAN, (9, 96, 160), "wan_tiny"),
}
SMOKE_VIDEO = (9, 64, 64)


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


def video_tokens(backbone, frames: int, height: int, width: int) -> int:
    """Video tokens of one clip: its latent grid divided by the transformer's patch."""
    _, latent_frames, _, latent_height, latent_width = backbone.latent_shape(1, frames, height, width)
    info = backbone.info
    return (latent_frames // info.patch_size_t) * (latent_height // info.patch_size) * (latent_width // info.patch_size)


def text_tokens(backbone) -> int:
    config = backbone.transformer.config
    return config["max_text_seq_length"] if "max_text_seq_length" in config else backbone.max_text_length


def forward_flops(family: str, transformer_config, identity_node, batch: int, n: int, text: int) -> float:
    """Model forward FLOPs of the trained network for one step, ``n`` video and ``text`` text tokens per sample
    (the count in the module docstring)."""
    c = transformer_config
    d = c["num_attention_heads"] * c["attention_head_dim"]
    if family == "cogvideox":
        s, patch, text_dim = n + text, c["patch_size"] ** 2, c["text_embed_dim"]
        blocks = c["num_layers"] * (24 * s * d**2 + 4 * s**2 * d)
        text_projection = 2 * text * text_dim * d
    else:  # wan
        patch, text_dim = c["patch_size"][0] * c["patch_size"][1] * c["patch_size"][2], c["text_dim"]
        self_attention = 8 * n * d**2 + 4 * n**2 * d
        cross_attention = 4 * n * d**2 + 4 * text * d**2 + 4 * n * text * d
        blocks = c["num_layers"] * (self_attention + cross_attention + 4 * n * d * c["ffn_dim"])
        text_projection = 2 * text * text_dim * d + 2 * text * d**2
    inner = identity_node["cross_attn_heads"] * identity_node["cross_attn_dim_head"]
    tokens = identity_node["extractor"]["num_queries"]
    identity_blocks = len(range(0, c["num_layers"], 2))
    identity = identity_blocks * (4 * n * d * inner + 4 * n * tokens * inner)
    edges = 2 * n * (c["in_channels"] * patch) * d + 2 * n * d * (c["out_channels"] * patch)  # in: widened
    return float(batch * (blocks + identity + edges + text_projection))


def counted_transformer_flops(module, family: str, batch: dict) -> tuple[float, float]:
    """(FlopCounterMode's count, this script's count) of one transformer forward at the batch's size."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    backbone = module.backbone  # diffusers' forward of the transformer: no injectors
    config = dict(backbone.transformer.config)
    b, f, _, h, w = batch["video"].shape
    _, latent_frames, _, latent_height, latent_width = backbone.latent_shape(b, f, h, w)
    text_length = text_tokens(backbone)
    text = torch.zeros(b, text_length, backbone.info.text_hidden_size)
    timestep = torch.zeros(b, dtype=torch.long)
    # The math backend runs attention as matmuls the counter sees (it misses the fused CPU attention kernel).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if family == "cogvideox":  # [B, F, C, H, W], (hidden_states, encoder_hidden_states, timestep)
            latents = torch.zeros(b, latent_frames, config["in_channels"], latent_height, latent_width)
            backbone.transformer(latents, text, timestep)
        else:  # wan: [B, C, F, H, W], (hidden_states, timestep, encoder_hidden_states)
            latents = torch.zeros(b, config["in_channels"], latent_frames, latent_height, latent_width)
            backbone.transformer(latents, timestep, text)
    no_identity = {"cross_attn_heads": 0, "cross_attn_dim_head": 0, "extractor": {"num_queries": 0}}
    analytic = forward_flops(family, config, no_identity, b, video_tokens(backbone, f, h, w), text_length)
    return float(counter.get_total_flops()), analytic


def compose(overrides: list[str]):
    from idvid import config_packages

    return config_packages.compose("config", overrides)


def run_one(args) -> dict:
    import hydra
    import lightning as L

    shape = MODELS[args.model]
    sizes = [] if args.smoke else [*CONSISID_FULL, *(shape.reduced if args.reduced else [])]
    overrides = [
        "experiment=plan_c",
        "scale=tiny",  # the demo data and no toy-scale settings; the backbone is chosen here
        f"backbone={shape.smoke_backbone if args.smoke else shape.backbone}",
        f"trainer={args.preset}",
        f"backbone.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "model.validation.sample=false",
        "model.validation.loss_quantiles=[]",
        f"data.batch_size={args.batch_size}",
        "data.num_frames=9",
        f"data.height={args.height}",
        f"trainer.default_root_dir={tempfile.mkdtemp(prefix='idvid-bench-')}",
        f"data.width={args.width}",
        *sizes,
        *args.overrides,
    ]
    cfg = compose(overrides)
    family = cfg.backbone.name
    L.seed_everything(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    clips = LongClips(datamodule.dataset, args.frames)
    from idvid.data.datamodule import collate

    sampler = RandomSampler(clips, replacement=True, num_samples=10**6)
    workers = 0 if args.smoke else 2  # --smoke: no worker start-up in a seconds-long run
    loader = DataLoader(clips, batch_size=args.batch_size, sampler=sampler, collate_fn=collate, num_workers=workers)
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
    tokens = video_tokens(module.backbone, args.frames, args.height, args.width)
    config = dict(module.backbone.transformer.config)
    text = text_tokens(module.backbone)
    flops = 3 * world * forward_flops(family, config, identity_node, args.batch_size, tokens, text)
    result = {
        "model": args.model,
        "preset": args.preset,
        "gradient_checkpointing": args.gradient_checkpointing,
        "size": "smoke" if args.smoke else "reduced" if args.reduced else "full",
        "video": f"{args.frames}x{args.height}x{args.width}",
        "global_batch": args.batch_size * world,
        "trained_params_M": round(sum(p.numel() for p in module.trainable_parameters()) / 1e6, 1),
        "step_time_s": round(step, 3),
        "video_tokens_per_s": round(tokens * args.batch_size * world / step, 1),
        "model_tflops_per_step": float(f"{flops / 1e12:.4g}"),
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
        counted, analytic = counted_transformer_flops(module.cpu(), family, next(iter(loader)))
        result["flops_check_counted_over_analytic"] = round(counted / analytic, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="cogvideox_5b")
    parser.add_argument("--preset", choices=PRESETS, default="gpu")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--frames", type=int, default=None, help="default: the model's (CogVideoX 49, Wan 81)")
    parser.add_argument("--height", type=int, default=None, help="default: 480")
    parser.add_argument("--width", type=int, default=None, help="default: the model's (CogVideoX 720, Wan 832)")
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reduced", action="store_true", help="full width, 2 blocks, 9 frames of 96x144 (Wan 96x160)")
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny demo backbone, 1 step on CPU: a seconds-long check that it runs"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    parser.add_argument("--check-flops", action="store_true", help="compare the FLOP formula with FlopCounterMode")
    parser.add_argument("--all", action="store_true", help="run every preset with and without checkpointing")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.devices=2")
    args = parser.parse_args()
    shape = MODELS[args.model]
    video = SMOKE_VIDEO if args.smoke else shape.reduced_video if args.reduced else shape.video
    args.frames, args.height, args.width = (
        given if given is not None else default for given, default in zip((args.frames, args.height, args.width), video)
    )
    if args.smoke:
        args.preset, args.steps, args.warmup = "cpu", 1, 0
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
