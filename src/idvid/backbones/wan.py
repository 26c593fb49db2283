"""Backbone adapter for Wan 2.1 / 2.2 text-to-video (diffusers' ``WanTransformer3DModel``).

This is the only code in idvid that knows Wan's block internals. It runs the transformer's
forward itself (the same diffusers submodules, so state-dict keys are diffusers' own) to call
the injection sites at exact places in each ``WanTransformerBlock``::

    pre_attn -> norm1 + modulation -> self-attention (3D RoPE) -> gated residual
             -> norm2 -> text cross-attention -> residual -> attn_ffn
             -> norm3 + modulation -> FFN -> gated residual -> post_attn

- ``pre_attn``: the block's input (video tokens).
- ``attn_ffn``: after the text cross-attention's residual, before norm3 / the FFN, so the FFN
  sees the injected signal (Wan's counterpart of "between attention and FFN").
- ``post_attn``: the block's output.
- ``input_concat``: the Conv3d patch embedding is widened (old weights copied, new input
  channels zero), so a widened model's output is unchanged until the new channels train.

Training objective: flow matching as Wan trains (``idvid.backbones.flow_matching``): velocity
target ``noise - x_0``, shifted-uniform noise levels with the scheduler's ``flow_shift``, weight 1.
Latents are normalised per channel with the VAE's ``latents_mean`` / ``latents_std`` (or, with ``codec`` in
place of ``vae``, a weight-free invertible codec's data statistics: ``idvid.backbones.codecs``).

Wan 2.2 A14B has two experts: ``transformer/`` for high noise (``t >= boundary_ratio * 1000``)
and ``transformer_2/`` for low noise; forward sends a batch to the expert of its timesteps, as
WanPipeline does. ``expert=`` chooses what trains:

- ``high_noise`` / ``low_noise``: that expert becomes ``self.transformer`` and training draws
  timesteps only from its range; the other is frozen and runs only its sampling steps.
- ``both``: ``self.transformer`` is a :class:`WanExpertPair` holding both (as ai-toolkit's dual
  transformer does); each training step first picks one expert for the whole global batch, with
  the probability that one-model training puts on its range, then draws every sample's noise level
  inside that range. So each expert only ever sees its own timesteps, and each sample's noise level
  is distributed exactly as in Wan's one-model training. (Only the step's expert has gradients; the
  ``trainer=ddp`` preset's ``ddp_find_unused_parameters_true`` allows that.)

Everything is built from config (tiny random models for the demo and tests) or loaded from one
local diffusers Wan pipeline folder (``pretrained``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from idvid.backbones.base import Backbone, BackboneInfo, NoisedLatents
from idvid.backbones.codecs import build_codec
from idvid.backbones.demo_tokenizer import build_demo_tokenizer
from idvid.backbones.flow_matching import FlowMatchingSchedule, draw_sigmas, flow_matching_noise, unshift_sigma
from idvid.backbones.lora import LORA_WEIGHTS_FILE, lora_layers
from idvid.backbones.reference_tokens import (
    ReferenceStream,
    attend_with_reference,
    project_reference,
    reference_grid_positions,
)
from idvid.injection.plan import NO_INJECTION, PreparedInjection
from idvid.injection.sites import Site
from idvid.randomness import BatchRandom
from idvid.registry import register_backbone

log = logging.getLogger(__name__)

PIPELINE_LAYOUT = "transformer/, vae/, text_encoder/, tokenizer/, scheduler/ (and transformer_2/ for Wan 2.2 A14B)"
SCHEDULERS = {cls.__name__: cls for cls in (UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler)}
EXPERTS = ("high_noise", "low_noise", "both")
NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep scale: the transformer sees 1000 * sigma
WAN_TEXT_LENGTH = 512  # UMT5 tokens per caption in Wan's pipelines


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_pipeline_folder(root: Path) -> dict[str, Any]:
    """Refuse folders this adapter cannot run, naming why and what to use; returns model_index.json."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"Pretrained Wan folder not found at {root}. `backbone.pretrained` must be a local diffusers Wan "
            f"pipeline folder containing {PIPELINE_LAYOUT}, e.g. a Wan-AI/Wan2.1-T2V-1.3B-Diffusers snapshot "
            "copied to this machine. No model is downloaded at run time."
        )
    index = _read_json(root / "model_index.json")
    transformer_class = _read_json(root / "transformer" / "config.json").get("_class_name")
    pipeline_class = index.get("_class_name") or "unknown"
    if "CogVideoX" in pipeline_class or "ConsisID" in pipeline_class:
        raise ValueError(
            f"{root} is a {pipeline_class} folder, not a Wan pipeline; use backbone=cogvideox_tiny with "
            f"backbone.pretrained={root} (the cogvideox backbone), or point backbone.pretrained at a Wan folder."
        )
    if transformer_class != "WanTransformer3DModel":
        raise ValueError(
            f"{root} is not a diffusers Wan pipeline folder: its transformer/config.json names "
            f"{transformer_class!r} (model_index.json: {pipeline_class!r}), expected 'WanTransformer3DModel'. "
            f"Point backbone.pretrained at a Wan T2V folder with {PIPELINE_LAYOUT}."
        )
    transformer_config = _read_json(root / "transformer" / "config.json")
    if (root / "image_encoder").is_dir() or transformer_config.get("image_dim") or "I2V" in pipeline_class:
        raise ValueError(
            f"{root} is a Wan image-to-video folder ({pipeline_class}: image_encoder/, a CLIP image embedding in "
            f"every cross-attention, in_channels={transformer_config.get('in_channels')} = 16 noise + 4 mask + 16 "
            "first-frame latent). The wan backbone trains text-to-video: it feeds neither the CLIP image tokens nor "
            "the first-frame latent and mask these weights expect. Use a Wan T2V folder (Wan2.1-T2V-1.3B/14B, "
            "Wan2.2-T2V-A14B); identity methods add their own input channels through input_concat injectors."
        )
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (root / part).is_dir():
            raise FileNotFoundError(
                f"{root / part}/ not found; a diffusers Wan pipeline folder contains {PIPELINE_LAYOUT}."
            )
    return index


def _check_latent_channels(transformer: nn.Module, z_dim: int, where: str) -> None:
    config = transformer.config
    if config.out_channels != z_dim or config.in_channels != z_dim:
        raise ValueError(
            f"{where}: the transformer takes {config.in_channels} and predicts {config.out_channels} latent channels "
            f"but the VAE's latent has z_dim={z_dim}. Use a transformer and VAE of the same Wan model (Wan 2.1 and "
            f"2.2 A14B: 16 channels; Wan 2.2 TI2V-5B: 48), or make backbone.transformer.in_channels and "
            f"out_channels equal backbone.vae.z_dim."
        )


def _scheduler_from(folder: Path | None, overrides: dict[str, Any] | None):
    """The folder's scheduler (its class and config) with ``overrides``; ``class_name`` switches class."""
    overrides = dict(overrides or {})
    config = _read_json(folder / "scheduler_config.json") if folder else {}
    class_name = overrides.pop("class_name", None) or config.get("_class_name") or "UniPCMultistepScheduler"
    if class_name not in SCHEDULERS:
        raise ValueError(
            f"backbone.scheduler.class_name={class_name!r} is not a flow-matching scheduler the wan backbone "
            f"supports; choose one of {', '.join(SCHEDULERS)}."
        )
    cls = SCHEDULERS[class_name]
    shift = overrides.pop("flow_shift", config.get("flow_shift", config.get("shift", 1.0)))
    # UniPC calls it flow_shift, flow-match Euler calls it shift: carry the folder's value across.
    overrides["shift" if cls is FlowMatchEulerDiscreteScheduler else "flow_shift"] = shift
    if cls is UniPCMultistepScheduler:
        overrides.setdefault("prediction_type", "flow_prediction")
        overrides.setdefault("use_flow_sigmas", True)
    return cls.from_config({**config, **overrides})


class WanExpertPair(nn.Module):
    """Wan 2.2's two experts trained together (``backbone.expert=both``): the backbone's ``transformer``.

    Full fine-tune, LoRA, EMA and checkpoints see both experts' parameters (``high_noise.*``,
    ``low_noise.*``). The members below are the diffusers model methods the kit calls on a
    transformer (``add_adapter``, ``fuse_lora``, ``unload_lora``, ``save_pretrained``), applied to each.
    """

    def __init__(self, high_noise: WanTransformer3DModel, low_noise: WanTransformer3DModel):
        super().__init__()
        self.high_noise, self.low_noise = high_noise, low_noise

    @property
    def experts(self) -> tuple[WanTransformer3DModel, WanTransformer3DModel]:
        return (self.high_noise, self.low_noise)

    @property
    def config(self):
        return self.high_noise.config  # Wan 2.2 A14B's experts share one architecture

    @property
    def peft_config(self) -> dict:
        return self.high_noise.peft_config

    def add_adapter(self, config) -> None:
        for expert in self.experts:
            expert.add_adapter(copy.deepcopy(config))

    def fuse_lora(self) -> None:
        for expert in self.experts:
            expert.fuse_lora()

    def unload_lora(self) -> None:
        for expert in self.experts:
            expert.unload_lora()

    def save_pretrained(self, folder: str | Path) -> None:
        """``folder`` gets the high-noise expert and its sibling ``<folder>_2`` the low-noise one.

        Given a pipeline folder's ``transformer/`` that is Wan 2.2's own layout (``transformer_2/``).
        """
        folder = Path(folder)
        self.high_noise.save_pretrained(folder)
        self.low_noise.save_pretrained(folder.with_name(f"{folder.name}_2"))


@register_backbone("wan")
class WanBackbone(Backbone):
    """Wan transformer(s) + Wan VAE + UMT5 text encoder + tokenizer + flow-matching scheduler."""

    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")  # self- and text cross-attention projections
    site_locations = {
        "input_concat": "patch_embedding (Conv3d) widened, every expert (new channels zero)",
        "pre_attn": "block input, before norm1 and the self-attention",
        "attn_ffn": "after the text cross-attention's residual, before norm3 and the FFN",
        "post_attn": "block output, after the FFN's gated residual",
        "text_tokens": "UMT5 input embeddings of added tokens (the encoder's own table stays frozen)",
        "sequence_concat": "reference tokens (patch_embedding) after the video tokens in the self-attention; "
        "own timestep modulation (per-token timesteps); they skip the text cross-attention",
    }
    reference_attention = ("full", "reference_isolated")
    honours_attention_exclusion = True

    def __init__(
        self,
        pretrained: str | None = None,
        transformer: dict[str, Any] | None = None,
        vae: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        max_text_length: int = WAN_TEXT_LENGTH,
        boundary_ratio: float | None = None,
        expert: str | None = None,
        default_video_size: tuple[int, int, int] | list[int] = (81, 480, 832),
        gradient_checkpointing: bool = False,
        codec: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.pretrained = pretrained
        if codec and (pretrained or vae):
            raise ValueError(
                "backbone.codec replaces the VAE: give either backbone.codec or backbone.vae (and no "
                "backbone.pretrained), not both (see conf/backbone/wan_toy.yaml). The default scale=toy selects "
                "the codec; a run from pretrained weights adds scale=tiny."
            )
        if pretrained:
            root = Path(pretrained).expanduser()
            index = _check_pipeline_folder(root)
            log.info("loading Wan components from %s", root)
            high_noise = WanTransformer3DModel.from_pretrained(root / "transformer")
            low_noise = (
                WanTransformer3DModel.from_pretrained(root / "transformer_2")
                if (root / "transformer_2").is_dir()
                else None
            )
            self.vae = AutoencoderKLWan.from_pretrained(root / "vae")
            self.text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder")
            self.tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            # The folder's text length (Wan: 512, what WanPipeline pads to); max_text_length is for built models.
            max_text_length = min(self.tokenizer.model_max_length, WAN_TEXT_LENGTH)
            self.scheduler = _scheduler_from(root / "scheduler", scheduler)
            if boundary_ratio is None:
                boundary_ratio = index.get("boundary_ratio")
            where = str(root)
        else:
            parts = {"transformer": transformer, "vae": vae or codec, "text_encoder": text_encoder}
            missing = [k for k, v in parts.items() if not v]
            if missing:
                raise ValueError(
                    f"backbone.pretrained is not set, so the backbone is built from config, but backbone.{missing[0]} "
                    "is empty (a backbone.codec may stand in for the VAE). "
                    "Give a local Wan pipeline folder as backbone.pretrained=PATH or a config for each of "
                    "transformer, vae, text_encoder (see hydra_conf/backbone/wan_tiny.yaml)."
                )
            log.info("building a randomly initialised Wan backbone from config (demo scale, not trained weights)")
            high_noise = WanTransformer3DModel(**transformer)
            # A two-expert (Wan 2.2 A14B-like) model from config: a second expert of the same shape.
            low_noise = WanTransformer3DModel(**transformer) if boundary_ratio is not None else None
            # A codec stands where the VAE does: frozen, fingerprinted, saved like one.
            self.vae = build_codec(codec) if codec else AutoencoderKLWan(**vae)
            self.tokenizer = build_demo_tokenizer(max_text_length)
            self.text_encoder = UMT5EncoderModel(UMT5Config(**{"vocab_size": len(self.tokenizer), **text_encoder}))
            self.scheduler = _scheduler_from(None, scheduler)
            where = "backbone config"
        self.latent_channels = self.codec.latent_channels if self.codec is not None else self.vae.config.z_dim
        for model in (high_noise, low_noise):
            if model is not None:
                _check_latent_channels(model, self.latent_channels, where)
        self.boundary_ratio, self.expert = self._choose_expert(expert, boundary_ratio, low_noise is not None)
        # The trained network is `transformer` (LoRA, widening and checkpoints act on it); with one expert
        # chosen, the other expert of a two-expert model is frozen and only runs in sampling, for its timesteps.
        if self.expert == "both":
            self.transformer, self.other_expert = WanExpertPair(high_noise, low_noise), None
        elif self.expert == "low_noise":
            self.transformer, self.other_expert = low_noise, high_noise
        else:
            self.transformer, self.other_expert = high_noise, low_noise
        self.max_text_length = int(max_text_length)
        self._default_video_size = tuple(int(v) for v in default_video_size)
        for frozen in self.frozen_modules.values():
            frozen.requires_grad_(False)
            frozen.eval()
        self.gradient_checkpointing = gradient_checkpointing
        # Wan's per-channel latent normalisation; a codec brings its own statistics (computed from data).
        if self.codec is not None:
            mean, std = self.codec.mean.flatten().clone(), self.codec.std.flatten().clone()
        else:
            mean, std = torch.tensor(self.vae.config.latents_mean), torch.tensor(self.vae.config.latents_std)
        self.register_buffer("latents_mean", mean.view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, 1, -1, 1, 1), persistent=False)

    @staticmethod
    def _choose_expert(expert: str | None, boundary_ratio: float | None, two_experts: bool):
        if not two_experts:
            if expert is not None:
                raise ValueError(
                    f"backbone.expert={expert!r}, but this Wan model has one transformer (no transformer_2/, no "
                    "boundary_ratio): there is no expert to choose. Remove backbone.expert (Wan 2.1), or use a "
                    "two-expert Wan 2.2 A14B folder (or backbone.boundary_ratio=0.875 for a model built from config)."
                )
            return None, None
        if boundary_ratio is None or not 0.0 < float(boundary_ratio) < 1.0:
            raise ValueError(
                f"A two-expert Wan model needs boundary_ratio in (0, 1) (Wan 2.2 A14B: 0.875); got {boundary_ratio!r}. "
                "Set backbone.boundary_ratio or add it to the folder's model_index.json."
            )
        if expert not in EXPERTS:
            raise ValueError(
                f"backbone.expert={expert!r}: this Wan 2.2 model has two experts, transformer/ for high noise "
                f"(t >= {float(boundary_ratio) * NUM_TRAIN_TIMESTEPS:.0f}) and transformer_2/ for low noise; choose "
                "which one trains with backbone.expert=high_noise or backbone.expert=low_noise (one run each; the "
                "other expert stays frozen and still samples its steps), or backbone.expert=both (both train, each "
                "on its own timesteps)."
            )
        return float(boundary_ratio), expert

    # ------------------------------------------------------------------ shape
    @property
    def info(self) -> BackboneInfo:
        config = self.transformer.config
        patch_t, patch_h, _ = config.patch_size
        return BackboneInfo(
            hidden_size=config.num_attention_heads * config.attention_head_dim,
            num_layers=config.num_layers,
            latent_channels=self.latent_channels,
            text_hidden_size=config.text_dim,
            vae_temporal_compression=self._temporal_compression,
            vae_spatial_compression=self.codec.spatial_compression
            if self.codec is not None
            else self.vae.config.scale_factor_spatial,
            patch_size=patch_h,
            patch_size_t=patch_t,
        )

    @property
    def _temporal_compression(self) -> int:
        return self.codec.temporal_compression if self.codec is not None else self.vae.config.scale_factor_temporal

    @property
    def frozen_modules(self) -> dict[str, nn.Module]:
        frozen = {"vae": self.vae, "text_encoder": self.text_encoder}
        if self.other_expert is not None:
            frozen["other_expert"] = self.other_expert
        return frozen

    @property
    def experts(self) -> list[WanTransformer3DModel]:
        """Every transformer of the model, trained or frozen (one for Wan 2.1, two for Wan 2.2 A14B)."""
        if isinstance(self.transformer, WanExpertPair):
            return list(self.transformer.experts)
        return [model for model in (self.transformer, self.other_expert) if model is not None]

    def _expert_model(self, high_noise: bool) -> WanTransformer3DModel:
        """The high- or low-noise expert of a two-expert model, whichever of them trains."""
        if isinstance(self.transformer, WanExpertPair):
            return self.transformer.high_noise if high_noise else self.transformer.low_noise
        return self.transformer if high_noise == (self.expert == "high_noise") else self.other_expert

    @property
    def default_video_size(self) -> tuple[int, int, int]:
        return self._default_video_size

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        info = self.info
        temporal, multiple = info.vae_temporal_compression, info.vae_spatial_compression * info.patch_size
        problems = []
        if num_frames < 1 or (num_frames - 1) % temporal:
            below = max(1, (num_frames - 1) // temporal * temporal + 1)
            problems.append(
                f"Wan's VAE takes 1 + a multiple of {temporal} frames (nearest: {below} or {below + temporal})"
            )
        for name, size in (("height", height), ("width", width)):
            if size < multiple or size % multiple:
                below = max(multiple, size // multiple * multiple)
                problems.append(f"the {name} must be a multiple of {multiple} (nearest: {below} or {below + multiple})")
        if problems:
            raise ValueError(f"Cannot sample {num_frames} frames of {height}x{width}: " + "; ".join(problems) + ".")
        return (
            batch_size,
            (num_frames - 1) // temporal + 1,
            self.latent_channels,
            height // info.vae_spatial_compression,
            width // info.vae_spatial_compression,
        )

    # ------------------------------------------------------------ input layer
    @property
    def input_layer(self) -> nn.Module:
        """The patch embedding (``Conv3d``); with ``expert=both`` both experts' patch embeddings."""
        if isinstance(self.transformer, WanExpertPair):
            return nn.ModuleList(expert.patch_embedding for expert in self.transformer.experts)
        return self.transformer.patch_embedding

    def set_input_channels(self, extra_channels: int) -> None:
        """Make the patch embedding accept ``latent_channels + extra_channels`` channels (new ones start at zero).

        Every expert is widened, trained or frozen: sampling runs the frozen one on the same widened
        input, and its zero new channels keep its output as it was.
        """
        for model in self.experts:
            self._widen(model, self.latent_channels + extra_channels)

    def _widen(self, model: WanTransformer3DModel, wanted: int) -> None:
        extra_channels = wanted - self.latent_channels
        old: nn.Conv3d = model.patch_embedding
        if old.in_channels == wanted:
            return
        if old.in_channels != self.latent_channels:
            raise ValueError(
                f"The transformer takes {old.in_channels} input channels, but this plan needs {wanted} "
                f"({self.latent_channels} latent + {extra_channels} from input_concat injectors). Only a "
                f"{self.latent_channels}-channel model can be widened; pick a plan whose input_concat channels add "
                f"up to {old.in_channels - self.latent_channels}, or start from a {self.latent_channels}-channel model."
            )
        widened = nn.Conv3d(wanted, old.out_channels, old.kernel_size, old.stride, bias=old.bias is not None)
        with torch.no_grad():
            widened.weight.zero_()
            widened.weight[:, : old.in_channels] = old.weight
            if old.bias is not None:
                widened.bias.copy_(old.bias)
        widened.to(device=old.weight.device, dtype=old.weight.dtype)
        widened.requires_grad_(old.weight.requires_grad)
        model.patch_embedding = widened
        model.register_to_config(in_channels=wanted)

    # --------------------------------------------------------------- encoders
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """UMT5 embeddings ``[B, max_text_length, D]``, zero after each caption's tokens (as WanPipeline does)."""
        tokens = self.tokenizer(
            [prompt_clean(caption) for caption in self.expand_placeholders(captions)],
            padding="max_length",
            max_length=self.max_text_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        # No torch.no_grad: autograd records nothing unless learned token rows (site text_tokens) train.
        hidden = self.text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def _check_frames(self, video: torch.Tensor) -> None:
        frames, temporal = video.shape[1], self._temporal_compression
        if (frames - 1) % temporal:
            low = (frames - 1) // temporal * temporal + 1
            raise ValueError(
                f"Wan's VAE encodes 1 + a multiple of {temporal} frames; got {frames} (it would drop the last "
                f"{(frames - 1) % temporal}). Use data.num_frames={low} or {low + temporal}."
            )

    @torch.no_grad()
    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, 3, H, W]`` in [-1, 1] -> the VAE posterior's (mean, std), raw latent space ``[B, f, C, h, w]``."""
        self._check_frames(video)
        if self.codec is not None:  # deterministic: its coefficients with std 0 (normalize_latents normalises them)
            raw = self.codec.transform(video)
            return raw, torch.zeros_like(raw)
        posterior = self.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist
        return posterior.mean.permute(0, 2, 1, 3, 4).contiguous(), posterior.std.permute(0, 2, 1, 3, 4).contiguous()

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Wan's per-channel normalisation: ``(z - latents_mean) / latents_std``."""
        return (raw - self.latents_mean.to(raw)) / self.latents_std.to(raw)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, f, C, h, w]`` -> video ``[B, F, 3, H, W]`` in [-1, 1]."""
        raw = latents * self.latents_std.to(latents) + self.latents_mean.to(latents)
        if self.codec is not None:
            return self.codec.inverse(raw).clamp(-1, 1)
        video = self.vae.decode(raw.permute(0, 2, 1, 3, 4).to(self.vae.dtype)).sample
        return video.permute(0, 2, 1, 3, 4).clamp(-1, 1)

    # ----------------------------------------------------------------- forward
    def expert_of(self, timestep: torch.Tensor) -> torch.Tensor:
        """Per sample: True where a trained expert handles this timestep (always, for one expert or ``both``)."""
        if self.boundary_ratio is None or self.expert == "both":
            return torch.ones_like(timestep, dtype=torch.bool)
        high = timestep >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS
        return high if self.expert == "high_noise" else ~high

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        injection: PreparedInjection = NO_INJECTION,
    ) -> torch.Tensor:
        """Predict the velocity ``[B, f, C_out, h, w]`` from ``latents`` ``[B, f, C_in, h, w]``.

        With two experts the timestep picks the expert (``t >= boundary``: high noise), as WanPipeline does;
        injectors act in whichever runs.
        """
        timestep = timestep.to(latents.device).expand(latents.shape[0])
        if self.boundary_ratio is None:
            return self._run_transformer(self.transformer, latents, timestep, text_embeddings, injection)
        high = timestep >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS
        if bool(high.all()) or not bool(high.any()):
            model = self._expert_model(high_noise=bool(high[0]))
        else:
            raise ValueError(
                f"Timesteps {timestep.tolist()} fall on both sides of the expert boundary "
                f"({self.boundary_ratio * NUM_TRAIN_TIMESTEPS:.0f}); call the two-expert Wan backbone with one "
                "expert's timesteps at a time (training draws them from backbone.expert's range, sampling uses "
                "one timestep per step)."
            )
        return self._run_transformer(model, latents, timestep, text_embeddings, injection)

    def _run_transformer(
        self,
        model: WanTransformer3DModel,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        injection: PreparedInjection,
    ) -> torch.Tensor:
        """diffusers' ``WanTransformer3DModel.forward`` (T2V) with the adapter's block loop."""
        batch, frames, channels, height, width = latents.shape
        if channels != model.patch_embedding.in_channels:
            raise ValueError(
                f"The transformer expects {model.patch_embedding.in_channels} input channels but got {channels}; "
                "call set_input_channels() with the plan's extra input_concat channels first."
            )
        video = latents.permute(0, 2, 1, 3, 4)  # diffusers' [B, C, F, H, W]
        rotary = model.rope(video)
        tokens = model.patch_embedding(video).flatten(2).transpose(1, 2).contiguous()
        temb, timestep_proj, text, _ = model.condition_embedder(timestep, text_embeddings, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        p_t, p_h, p_w = model.config.patch_size
        injection = injection.with_token_grid((frames // p_t, height // p_h, width // p_w))
        reference = self._reference_stream(
            model, injection, (frames // p_t, height // p_h, width // p_w), timestep_proj
        )
        reference_tokens = reference.tokens if reference is not None else None
        # An attention exclusion: one mask over video queries x (video, reference) keys for every block.
        reference_keys = reference.num_tokens if reference is not None else 0
        attention_mask = self.video_attention_mask(
            injection, (frames // p_t, height // p_h, width // p_w), trailing_keys=reference_keys
        )

        for index, block in enumerate(model.blocks):
            arguments = (index, block, tokens, text, timestep_proj, rotary, injection)
            arguments += (reference, reference_tokens, attention_mask)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens, reference_tokens = checkpoint(self._run_block, *arguments, use_reentrant=False)
            else:
                tokens, reference_tokens = self._run_block(*arguments)

        # The reference tokens end here: the output head sees the video tokens only.
        shift, scale = (model.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (model.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        tokens = model.proj_out(tokens)
        grid = tokens.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        # -> [B, f, p_t, C, h, p_h, w, p_w] -> [B, F, C, H, W]
        return grid.permute(0, 1, 4, 7, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(1, 2)

    @staticmethod
    def _run_block(
        index: int,
        block: nn.Module,
        video: torch.Tensor,
        text: torch.Tensor,
        timestep_proj: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        injection: PreparedInjection,
        reference: ReferenceStream | None = None,
        reference_tokens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """diffusers' ``WanTransformerBlock.forward`` (per-sample timestep), with the three sites called explicitly.

        With ``reference`` (site sequence_concat) the reference tokens join the self-attention with their own
        modulation (Wan's per-token timesteps) and skip the text cross-attention; in-block sites see video only.
        With ``attention_mask`` (an attention exclusion) the video queries of the self-attention take it.
        """
        video = injection.apply(Site.PRE_ATTN, index, video)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            block.scale_shift_table + timestep_proj.float()
        ).chunk(6, dim=1)

        normed = (block.norm1(video.float()) * (1 + scale_msa) + shift_msa).type_as(video)
        if reference is None and attention_mask is None:  # diffusers' own attention processor
            attention = block.attn1(normed, None, None, rotary)
        else:
            attention, reference_attention = _self_attention(
                index, block, normed, rotary, reference, reference_tokens, attention_mask
            )
            if reference_tokens is not None:
                reference_tokens = _reference_after_attention(block, reference_tokens, *reference_attention)
        video = (video.float() + attention * gate_msa).type_as(video)

        normed = block.norm2(video.float()).type_as(video)
        video = video + block.attn2(normed, text, None, None)

        video = injection.apply(Site.ATTN_FFN, index, video)

        normed = (block.norm3(video.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(video)
        ff_output = block.ffn(normed)
        video = (video.float() + ff_output.float() * c_gate_msa).type_as(video)

        return injection.apply(Site.POST_ATTN, index, video), reference_tokens

    # ------------------------------------------------------- sequence_concat
    def _reference_stream(
        self,
        model: WanTransformer3DModel,
        injection: PreparedInjection,
        video_grid: tuple[int, int, int],
        timestep_proj: torch.Tensor | None,
    ) -> ReferenceStream | None:
        """The reference tokens, their rotary embedding and their modulation (site sequence_concat)."""
        prepared = injection.reference
        if prepared is None:
            return None
        if prepared.cache is not None:  # the blocks read cached keys and values: nothing to embed
            return ReferenceStream(prepared.injector, None, None, None, prepared.cache[id(model)])
        injector, grid = prepared.injector, None
        dtype = model.patch_embedding.weight.dtype
        if prepared.is_latent:
            reference = prepared.value.to(dtype)
            batch, frames, channels, height, width = reference.shape
            extra = model.patch_embedding.in_channels - channels  # input_concat channels: zero for the reference
            if extra:
                reference = torch.cat([reference, reference.new_zeros(batch, frames, extra, height, width)], dim=2)
            embedded = model.patch_embedding(reference.permute(0, 2, 1, 3, 4))  # [B, D, f', h', w']
            grid = tuple(embedded.shape[2:])
            tokens = embedded.flatten(2).transpose(1, 2).contiguous()
        else:
            tokens = prepared.value.to(dtype)
        if injector.reference_timestep is None:
            modulation = timestep_proj
        else:
            clean = torch.full((tokens.shape[0],), float(injector.reference_timestep), device=tokens.device)
            # Wan's per-token timestep: the reference tokens' own modulation (no text: an empty sequence).
            no_text = tokens.new_zeros(tokens.shape[0], 0, model.config.text_dim)
            _, modulation, _, _ = model.condition_embedder(clean, no_text, None)
            modulation = modulation.unflatten(1, (6, -1))
        positions = reference_grid_positions(injector, video_grid, grid, tokens.shape[1])
        rotary = tuple(r.to(tokens.device) for r in self.rotary_at(model, *positions))
        return ReferenceStream(injector, tokens, rotary, modulation)

    @staticmethod
    def rotary_at(model: WanTransformer3DModel, frame: torch.Tensor, row: torch.Tensor, column: torch.Tensor):
        """Wan's 3D RoPE (cos, sin) ``[1, N, 1, head_dim]`` at explicit (frame, row, column) positions.

        The frequencies of diffusers' ``WanRotaryPosEmbed`` (theta 10000, float64), at any position, e.g.
        frame -1 for a reference before the video (its table only holds positions 0..max_seq_len-1).
        """
        rope = model.rope
        cos, sin = zip(
            *(
                get_1d_rotary_pos_embed(size, positions.double(), 10000.0, use_real=True, freqs_dtype=torch.float64)
                for size, positions in ((rope.t_dim, frame), (rope.h_dim, row), (rope.w_dim, column))
            )
        )
        return torch.cat(cos, dim=-1)[None, :, None], torch.cat(sin, dim=-1)[None, :, None]

    @torch.no_grad()
    def cache_reference(self, injection: PreparedInjection, latent_shape: tuple[int, ...]) -> PreparedInjection:
        """Run the static reference through every block of every expert once, keeping their keys and values."""
        prepared = injection.reference
        if prepared is None or not prepared.injector.reference_is_static:
            raise ValueError(
                "cache_reference needs a reference that cannot depend on the noisy video "
                "(sequence_concat with attention=reference_isolated and timestep=0)."
            )
        uncached = injection.with_reference(dataclasses.replace(prepared, cache=None))
        info = self.info
        video_grid = (latent_shape[1] // info.patch_size_t, *(n // info.patch_size for n in latent_shape[3:]))
        cache = {}
        for model in self.experts:
            stream = self._reference_stream(model, uncached, video_grid, None)
            tokens, cached = stream.tokens, []
            for index, block in enumerate(model.blocks):
                query, key, value, modulation = _reference_heads(index, block, tokens, stream)
                cached.append((key, value))
                attended = attend_with_reference(None, (key, value), query, isolated=True)[1]
                tokens = _reference_after_attention(block, tokens, attended, modulation)
            cache[id(model)] = cached
        return injection.with_reference(dataclasses.replace(prepared, cache=cache))

    # ---------------------------------------------------------- training objective
    @property
    def flow_shift(self) -> float:
        """The scheduler's timestep shift (UniPC: ``flow_shift``; flow-match Euler: ``shift``), used in training too."""
        config = self.scheduler.config
        return float(config.flow_shift if "flow_shift" in config else config.shift)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """The noise levels training covers: the trained expert's share, else the whole schedule (one expert, both)."""
        return self._sigma_range(self.expert)

    def _sigma_range(self, expert: str | None) -> tuple[float, float]:
        if self.boundary_ratio is None or expert in (None, "both"):
            return (0.0, 1.0)
        return (self.boundary_ratio, 1.0) if expert == "high_noise" else (0.0, self.boundary_ratio)

    def _draw_step_expert(self, random: BatchRandom, t_fraction: float | None) -> str:
        """``expert=both``: the expert of this step, high noise with the share one-model training gives it.

        One draw from the shared generator, identical on every rank, so the whole global batch (and every
        data-parallel process) runs one expert. It is drawn even when ``t_fraction`` fixes the noise level,
        which then decides the expert, so the later draws of the step stay where they are.
        """
        coin = float(torch.rand((), generator=random.generator))
        if t_fraction is not None:
            return "high_noise" if float(t_fraction) >= self.boundary_ratio else "low_noise"
        high_noise_share = 1.0 - unshift_sigma(self.boundary_ratio, self.flow_shift)
        return "high_noise" if coin < high_noise_share else "low_noise"

    def add_training_noise(
        self, clean: torch.Tensor, random: BatchRandom, t_fraction: float | None = None
    ) -> NoisedLatents:
        expert, sigma_range = self.expert, self.sigma_range
        if expert == "both":
            expert = self._draw_step_expert(random, t_fraction)
            # A fixed fraction is of the whole schedule; a drawn level stays in the step's expert's range.
            if t_fraction is None:
                sigma_range = self._sigma_range(expert)
        sigmas = draw_sigmas(random, clean.shape[0], self.flow_shift, sigma_range, t_fraction)
        timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).to(clean.device)
        if self.boundary_ratio is not None:
            # Rounding must not hand a sample to the other expert: the boundary belongs to high noise (t >= it).
            boundary = torch.tensor(self.boundary_ratio * NUM_TRAIN_TIMESTEPS, dtype=timesteps.dtype)
            if expert == "high_noise":
                timesteps = timesteps.clamp(min=float(boundary))
            else:
                timesteps = timesteps.clamp(max=float(torch.nextafter(boundary, torch.zeros(()))))
        noise = random.randn_like(clean)
        return NoisedLatents(
            noisy=flow_matching_noise(clean, noise, timesteps / NUM_TRAIN_TIMESTEPS),
            timesteps=timesteps,
            target=noise - clean,
            weight=torch.ones_like(timesteps),
        )

    def to_target_space(self, prediction: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
        return prediction  # the network predicts the velocity, which is the target

    # ---------------------------------------------------------------- sampling
    def sampling_schedule(self, num_inference_steps: int, device: torch.device | str | None) -> FlowMatchingSchedule:
        return FlowMatchingSchedule(self.scheduler, num_inference_steps, device)

    # -------------------------------------------------------------------- LoRA
    def save_lora(self, folder: Path) -> Path:
        """``folder/pytorch_lora_weights.safetensors`` in the layout ``WanPipeline.load_lora_weights`` reads.

        A LoRA of the low-noise expert loads with ``load_lora_weights(folder, load_into_transformer_2=True)``;
        with ``expert=both`` the high-noise expert's LoRA is ``folder/`` and the low-noise one's ``folder/low_noise/``.
        """
        if isinstance(self.transformer, WanExpertPair):
            self._save_lora_of(self.transformer.high_noise, Path(folder))
            self._save_lora_of(self.transformer.low_noise, Path(folder) / "low_noise")
            log.info("LoRA of both Wan 2.2 experts: load %s/low_noise with load_into_transformer_2=True", folder)
        else:
            self._save_lora_of(self.transformer, Path(folder))
        if self.expert == "low_noise":
            log.info("LoRA of Wan 2.2's low-noise expert: load it with load_into_transformer_2=True")
        return Path(folder) / LORA_WEIGHTS_FILE

    @staticmethod
    def _save_lora_of(model: WanTransformer3DModel, folder: Path) -> None:
        WanPipeline.save_lora_weights(
            folder,
            transformer_lora_layers=lora_layers(model),
            transformer_lora_adapter_metadata=model.peft_config["default"].to_dict(),
        )


def _apply_rotary(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on ``[B, N, heads, d]`` (interleaved pairs), as its attention processor applies it."""
    x1, x2 = hidden.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return rotated.type_as(hidden)


def _heads(attn: nn.Module, projected: dict[str, torch.Tensor], rotary) -> tuple[torch.Tensor, ...]:
    """Wan self-attention q, k, v ``[B, N, heads * d]`` -> ``[B, heads, N, d]``: RMS QK norm, then RoPE."""
    query, key = attn.norm_q(projected["q"]), attn.norm_k(projected["k"])
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, projected["v"]))
    query, key = _apply_rotary(query, *rotary), _apply_rotary(key, *rotary)
    return tuple(t.transpose(1, 2) for t in (query, key, value))


def _attention_output(attn: nn.Module, attended: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](attended.transpose(1, 2).flatten(2).type_as(like)))


def _reference_heads(index: int, block: nn.Module, tokens: torch.Tensor, reference: ReferenceStream):
    """The reference tokens' modulated norm1, q/k/v (with the injector's residuals), QK norm and RoPE."""
    modulation = (block.scale_shift_table + reference.modulation.float()).chunk(6, dim=1)
    shift, scale = modulation[0], modulation[1]
    normed = (block.norm1(tokens.float()) * (1 + scale) + shift).type_as(tokens)
    attn = block.attn1
    projected = project_reference(reference, index, {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}, normed)
    return (*_heads(attn, projected, reference.rotary), modulation)


def _reference_after_attention(
    block: nn.Module, tokens: torch.Tensor, attended: torch.Tensor, modulation: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """The reference tokens after the self-attention's gated residual, norm3, the FFN and its gated residual."""
    _, _, gate, c_shift, c_scale, c_gate = modulation
    tokens = (tokens.float() + _attention_output(block.attn1, attended, tokens) * gate).type_as(tokens)
    normed = (block.norm3(tokens.float()) * (1 + c_scale) + c_shift).type_as(tokens)
    return (tokens.float() + block.ffn(normed).float() * c_gate).type_as(tokens)


def _self_attention(
    index: int,
    block: nn.Module,
    normed: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    reference: ReferenceStream | None,
    reference_tokens: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
):
    """Wan's self-attention of the video tokens, plus the reference tokens when there are any.

    Video queries read video + reference keys, except the pairs ``attention_mask`` (``[B, 1, N, N + N_ref]``, an
    attention exclusion) forbids; reference queries read every key (``full``) or only the reference's
    (``reference_isolated``), unmasked. Returns the video's attention output and the reference's (before
    ``to_out``, with its modulation; None without a reference or when its keys and values come from the cache).
    """
    attn = block.attn1
    main = _heads(attn, {"q": attn.to_q(normed), "k": attn.to_k(normed), "v": attn.to_v(normed)}, rotary)
    if reference is None:
        attended = F.scaled_dot_product_attention(*main, attn_mask=attention_mask)
        return _attention_output(attn, attended, normed), (None, None)
    if reference_tokens is None:
        reference_query, reference_key_value, modulation = None, reference.cached[index], None
    else:
        reference_query, *reference_key_value, modulation = _reference_heads(index, block, reference_tokens, reference)
    video_out, reference_out = attend_with_reference(
        main, tuple(reference_key_value), reference_query, reference.isolated, attention_mask
    )
    return _attention_output(attn, video_out, normed), (reference_out, modulation)
