"""Backbone adapter for CogVideoX (diffusers' ``CogVideoXTransformer3DModel``).

This is the only code in idvid that knows CogVideoX's block internals. It owns
the transformer's forward pass (same diffusers submodules, so state-dict keys
are diffusers' own) in order to call the injection sites at exact places:

    pre_attn -> norm1 -> attn1 -> gated residual -> attn_ffn -> norm2 -> FFN -> gated residual -> post_attn

``attn_ffn`` cannot be done with hooks: changing ``norm2``'s input would change
what the FFN sees but not the residual stream, so the block is run here.

The adapter also holds the model family's frozen parts (VAE, T5 text encoder,
tokenizer, scheduler). Everything is either built from config (tiny random
models for the demo and tests) or loaded from one local diffusers pipeline
folder (``pretrained``).

The family's side of the backbone contract (``idvid.backbones.base``):

- latents: the VAE posterior sample times ``vae.config.scaling_factor`` (or, with ``codec`` in place of ``vae``,
  a weight-free invertible codec's normalised coefficients: ``idvid.backbones.codecs``);
- training objective: v-prediction on the DDPM schedule's ``alphas_cumprod``, t ~ U{0..T-1}; the
  loss compares the x0 estimate ``sqrt(a) x_t - sqrt(1 - a) v`` with the clean latent, weighted by
  ``1 / (1 - a)`` (ConsisID's and CogVideoX's fine-tuning loss);
- sampling: ``CogVideoXDPMScheduler``, whose step also takes the previous step's x0 estimate and
  timestep (:class:`CogVideoXDPMSchedule` keeps them);
- input_concat widens ``transformer.patch_embed.proj``; LoRA exports through CogVideoX's LoRA format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed, get_3d_rotary_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from idvid.backbones.base import Backbone, BackboneInfo, DiffusersSchedule, NoisedLatents
from idvid.backbones.codecs import build_codec
from idvid.backbones.demo_tokenizer import build_demo_tokenizer
from idvid.backbones.lora import LORA_WEIGHTS_FILE, lora_adapter_metadata, lora_layers
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

PIPELINE_LAYOUT = "transformer/, vae/, text_encoder/, tokenizer/, scheduler/"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} not found at {path}. `backbone.pretrained` must be a local diffusers CogVideoX pipeline "
            f"folder containing {PIPELINE_LAYOUT} (for example a downloaded THUDM/CogVideoX-5b-I2V or "
            f"ConsisID-preview snapshot copied to this machine). No model is downloaded at run time."
        )
    return path


# ConsisID-preview's transformer is a CogVideoX-5B-I2V transformer plus the identity modules; its
# CogVideoX weights load into CogVideoXTransformer3DModel (the identity ones go through convert).
TRANSFORMER_CLASSES = ("CogVideoXTransformer3DModel", "ConsisIDTransformer3DModel")


def _check_pipeline_class(root: Path) -> None:
    """Refuse another family's folder before loading it, naming the backbone to use."""
    config = root / "transformer" / "config.json"
    if not config.is_file():
        return  # the layout check below names what is missing
    transformer_class = json.loads(config.read_text()).get("_class_name")
    index = root / "model_index.json"
    pipeline_class = (json.loads(index.read_text()) if index.is_file() else {}).get("_class_name") or "unknown"
    if transformer_class == "WanTransformer3DModel":
        raise ValueError(
            f"{root} is a {pipeline_class} folder, not a CogVideoX pipeline; use backbone=wan_tiny with "
            f"backbone.pretrained={root} (the wan backbone), or point backbone.pretrained at a CogVideoX folder."
        )
    if transformer_class not in TRANSFORMER_CLASSES:
        raise ValueError(
            f"{root} is not a diffusers CogVideoX pipeline folder: its transformer/config.json names "
            f"{transformer_class!r} (model_index.json: {pipeline_class!r}), expected 'CogVideoXTransformer3DModel' "
            f"(or a ConsisID-preview folder). Point backbone.pretrained at a CogVideoX folder with {PIPELINE_LAYOUT}."
        )


def _check_latent_channels(transformer: CogVideoXTransformer3DModel, latent: int, where: str) -> None:
    config = transformer.config
    # in_channels may exceed the latent (CogVideoX-5B-I2V and ConsisID take 32: noise + image latent).
    if config.out_channels != latent or config.in_channels < latent:
        raise ValueError(
            f"{where}: the transformer takes {config.in_channels} and predicts {config.out_channels} latent channels "
            f"but the VAE's latent has latent_channels={latent}. Use a transformer and VAE of the same CogVideoX "
            f"model (16 channels), or make backbone.transformer.out_channels equal backbone.vae.latent_channels."
        )


#: the x0 loss's per-sample weight: ``snr_plus_one`` is ``1 / (1 - alpha_bar)`` (CogVideoX's and ConsisID's,
#: the v-prediction MSE written in x0 space; it grows without bound at low noise), ``uniform`` is 1 (every
#: noise level counts in the picture's own units, so the noisiest steps, where the layout and the
#: reference are decided, are not drowned out by the nearly clean ones: the toy configuration's choice)
LOSS_WEIGHTS = ("snr_plus_one", "uniform")


@register_backbone("cogvideox")
class CogVideoXBackbone(Backbone):
    """CogVideoX transformer + VAE + T5 text encoder + tokenizer + DPM scheduler."""

    site_locations = {
        "input_concat": "patch_embed.proj widened (new channels zero)",
        "pre_attn": "block input, before norm1 and the joint text-video attention",
        "attn_ffn": "after the attention's gated residual, before norm2 and the FFN",
        "post_attn": "block output, after the FFN's gated residual",
        "text_tokens": "T5 input embeddings of added tokens (the encoder's own table stays frozen)",
        "sequence_concat": "reference tokens (patch_embed.proj) after the video tokens in the joint attention; "
        "own AdaLN modulation for their timestep; text queries see what video queries see",
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
        gradient_checkpointing: bool = False,
        codec: dict[str, Any] | None = None,
        loss_weight: str = "snr_plus_one",
    ):
        super().__init__()
        self.pretrained = pretrained
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"backbone.loss_weight={loss_weight!r} is not one of {LOSS_WEIGHTS}.")
        self.loss_weight = loss_weight
        if codec and (pretrained or vae):
            raise ValueError(
                "backbone.codec replaces the VAE: give either backbone.codec or backbone.vae (and no "
                "backbone.pretrained), not both (see conf/backbone/cogvideox_toy.yaml). The default scale=toy selects "
                "the codec; a run from pretrained weights adds scale=tiny."
            )
        if pretrained:
            root = _require_dir(Path(pretrained).expanduser(), "Pretrained CogVideoX folder")
            _check_pipeline_class(root)
            for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
                _require_dir(root / part, f"{part}/ subfolder")
                if part != "tokenizer" and not any((root / part).glob("*config.json")):
                    raise FileNotFoundError(
                        f"{root / part} has no config.json; it must be a diffusers/transformers save_pretrained "
                        f"folder ({PIPELINE_LAYOUT} each with its config and weights)."
                    )
            log.info("loading CogVideoX components from %s", root)
            self.transformer = CogVideoXTransformer3DModel.from_pretrained(root / "transformer")
            self.vae = AutoencoderKLCogVideoX.from_pretrained(root / "vae")
            self.text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder")
            self.tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            self.scheduler = CogVideoXDPMScheduler.from_pretrained(root / "scheduler")
            where = str(root)
        else:
            parts = {"transformer": transformer, "vae": vae or codec, "text_encoder": text_encoder}
            missing = [k for k, v in parts.items() if not v]
            if missing:
                raise ValueError(
                    f"backbone.pretrained is not set, so the backbone is built from config, but "
                    f"backbone.{missing[0]} is empty (a backbone.codec may stand in for the VAE). "
                    "Give a local pipeline folder as backbone.pretrained=PATH "
                    f"or a config for each of transformer, vae, text_encoder (see hydra_conf/backbone/)."
                )
            log.info("building a randomly initialised CogVideoX backbone from config (demo scale, not trained weights)")
            self.transformer = CogVideoXTransformer3DModel(**transformer)
            # A codec stands where the VAE does: frozen, fingerprinted, saved like one.
            self.vae = build_codec(codec) if codec else AutoencoderKLCogVideoX(**vae)
            self.tokenizer = build_demo_tokenizer(self.transformer.config.max_text_seq_length)
            self.text_encoder = T5EncoderModel(T5Config(**{"vocab_size": len(self.tokenizer), **text_encoder}))
            self.scheduler = CogVideoXDPMScheduler(**(scheduler or {}))
            where = "backbone config"
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type not in ("v_prediction", "sample"):
            raise ValueError(
                f"backbone.scheduler.prediction_type={prediction_type!r}: the CogVideoX objective trains v_prediction "
                "(CogVideoX's own) or sample (x0, for the toy codec's pixel-like latents); use one of those."
            )
        self.latent_channels = self.codec.latent_channels if self.codec is not None else self.vae.config.latent_channels
        _check_latent_channels(self.transformer, self.latent_channels, where)
        config = self.transformer.config
        if config.patch_size_t is not None or config.ofs_embed_dim:
            raise NotImplementedError(
                "CogVideoXBackbone supports the CogVideoX 1.0 family (2D patches, no ofs embedding); this "
                f"transformer has patch_size_t={config.patch_size_t}, ofs_embed_dim={config.ofs_embed_dim} "
                "(CogVideoX 1.5). Add a separate adapter for it."
            )
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        self.gradient_checkpointing = gradient_checkpointing

    # ------------------------------------------------------------------ shape
    @property
    def info(self) -> BackboneInfo:
        config = self.transformer.config
        return BackboneInfo(
            hidden_size=config.num_attention_heads * config.attention_head_dim,
            num_layers=config.num_layers,
            latent_channels=self.latent_channels,
            text_hidden_size=config.text_embed_dim,
            vae_temporal_compression=self._temporal_compression,
            vae_spatial_compression=self._spatial_compression,
            patch_size=config.patch_size,
            patch_size_t=1,  # CogVideoX 1.0 (1.5's temporal patches are refused in __init__)
        )

    @property
    def _temporal_compression(self) -> int:
        return self.codec.temporal_compression if self.codec is not None else self.vae.config.temporal_compression_ratio

    @property
    def _spatial_compression(self) -> int:
        return (
            self.codec.spatial_compression
            if self.codec is not None
            else 2 ** (len(self.vae.config.block_out_channels) - 1)
        )

    @property
    def default_video_size(self) -> tuple[int, int, int]:
        """The size the transformer was built for, as diffusers' CogVideoX pipelines default to."""
        config, spatial = self.transformer.config, self.info.vae_spatial_compression
        return config.sample_frames, config.sample_height * spatial, config.sample_width * spatial

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        info = self.info
        temporal, size_step = info.vae_temporal_compression, info.vae_spatial_compression * info.patch_size
        bad_frames = num_frames < 1 or (num_frames - 1) % temporal
        if bad_frames or height % size_step or width % size_step or min(height, width) < size_step:
            frames_below = max(1, (num_frames - 1) // temporal * temporal + 1)
            raise ValueError(
                f"Cannot sample {num_frames} frames of {height}x{width}: CogVideoX takes 1 + a multiple of "
                f"{temporal} frames (nearest: {frames_below} or {frames_below + temporal}) and heights and widths "
                f"that are multiples of {size_step} (nearest: {_nearest_multiples(height, size_step)} x "
                f"{_nearest_multiples(width, size_step)})."
            )
        return (
            batch_size,
            (num_frames - 1) // temporal + 1,
            info.latent_channels,
            height // info.vae_spatial_compression,
            width // info.vae_spatial_compression,
        )

    @property
    def input_layer(self) -> nn.Module:
        return self.transformer.patch_embed.proj

    def set_input_channels(self, extra_channels: int) -> None:
        """Make the patch embedding accept ``latent_channels + extra_channels`` input channels.

        A model built for fewer channels is widened: old weights are copied, the new
        input channels start at zero, so the output is unchanged until they train. A
        model that already has exactly that many (e.g. an I2V or ConsisID checkpoint)
        is kept as it is.
        """
        wanted = self.latent_channels + extra_channels
        proj: nn.Conv2d = self.transformer.patch_embed.proj
        have = proj.in_channels
        if have == wanted:
            return
        if have != self.latent_channels:
            raise ValueError(
                f"The transformer takes {have} input channels, but this plan needs {wanted} "
                f"({self.latent_channels} latent + {extra_channels} from input_concat injectors). Only a "
                f"{self.latent_channels}-channel model can be widened; pick a plan whose input_concat channels "
                f"add up to {have - self.latent_channels}, or start from a {self.latent_channels}-channel model."
            )
        widened = nn.Conv2d(wanted, proj.out_channels, proj.kernel_size, proj.stride, bias=proj.bias is not None)
        with torch.no_grad():
            widened.weight.zero_()
            widened.weight[:, :have] = proj.weight
            if proj.bias is not None:
                widened.bias.copy_(proj.bias)
        widened.to(device=proj.weight.device, dtype=proj.weight.dtype)
        self.transformer.patch_embed.proj = widened
        self.transformer.register_to_config(in_channels=wanted)

    # --------------------------------------------------------------- encoders
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        max_length = self.transformer.config.max_text_seq_length
        tokens = self.tokenizer(
            self.expand_placeholders(captions),
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        # No torch.no_grad: autograd records nothing unless learned token rows (site text_tokens) train.
        return self.text_encoder(tokens.input_ids.to(device))[0]

    @torch.no_grad()
    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, 3, H, W]`` in [-1, 1] -> the VAE posterior's (mean, std), in the VAE's ``[B, C, f, h, w]``.

        A codec is deterministic: its coefficients with std 0.
        """
        if self.codec is not None:
            raw = self.codec.transform(video).permute(0, 2, 1, 3, 4).contiguous()
            return raw, torch.zeros_like(raw)
        posterior = self.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist
        return posterior.mean, posterior.std

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        if self.codec is not None:
            return self.codec.normalize(raw.permute(0, 2, 1, 3, 4)).contiguous()
        return (raw * self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, f, C, h, w]`` -> video ``[B, F, 3, H, W]`` in [-1, 1]."""
        if self.codec is not None:
            return self.codec.decode(latents).clamp(-1, 1)
        latents = latents.permute(0, 2, 1, 3, 4) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample.permute(0, 2, 1, 3, 4).clamp(-1, 1)

    # ------------------------------------------------------ training objective
    def add_training_noise(
        self, clean: torch.Tensor, random: BatchRandom, t_fraction: float | None = None
    ) -> NoisedLatents:
        """DDPM noising at t ~ U{0..T-1} (or t = round(t_fraction * (T - 1))); target the clean latent."""
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        timesteps = random.randint(num_train_timesteps, clean.shape[0])
        if t_fraction is not None:
            if not 0.0 <= t_fraction <= 1.0:
                raise ValueError(f"t_fraction={t_fraction} is not a fraction of the schedule; use a value in [0, 1].")
            timesteps = torch.full_like(timesteps, int(round(t_fraction * (num_train_timesteps - 1))))
        noise = random.randn_like(clean)
        timesteps = timesteps.to(clean.device)
        # In the latents' precision, as the loss has always computed it (diffusers keeps alphas_cumprod in float64).
        alpha_bar = self.scheduler.alphas_cumprod.to(clean.device)[timesteps].to(clean.dtype)
        return NoisedLatents(
            noisy=self.scheduler.add_noise(clean, noise, timesteps),
            timesteps=timesteps,
            target=clean,
            weight=(
                1.0 / (1.0 - alpha_bar) if self.loss_weight == "snr_plus_one" else torch.ones_like(alpha_bar)
            ).float(),
        )

    def to_target_space(self, prediction: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
        """The transformer's output as an x0 estimate, by the scheduler's ``prediction_type`` (the sampler's
        scheduler reads the same setting): ``v_prediction`` (CogVideoX) gives ``sqrt(a) x_t - sqrt(1 - a) v``,
        ``sample`` is x0 itself."""
        if self.scheduler.config.prediction_type == "sample":
            return prediction
        alphas_cumprod = self.scheduler.alphas_cumprod.to(prediction.device)[noised.timesteps]
        alpha_bar = alphas_cumprod.to(prediction.dtype).view(-1, 1, 1, 1, 1)
        return alpha_bar.sqrt() * noised.noisy - (1 - alpha_bar).sqrt() * prediction

    # ---------------------------------------------------------------- sampling
    def sampling_schedule(self, num_inference_steps: int, device: torch.device | str) -> "CogVideoXDPMSchedule":
        return CogVideoXDPMSchedule(self.scheduler, num_inference_steps, device)

    # -------------------------------------------------------------------- LoRA
    def save_lora(self, folder: Path) -> Path:
        # Any pipeline of the CogVideoX LoRA family writes the same transformer-only layout. The metadata
        # (rank, alpha, targets) lets diffusers rebuild the same scaling when it loads the file.
        CogVideoXPipeline.save_lora_weights(
            folder,
            transformer_lora_layers=lora_layers(self.transformer),
            transformer_lora_adapter_metadata=lora_adapter_metadata(self.transformer),
        )
        return Path(folder) / LORA_WEIGHTS_FILE

    # ----------------------------------------------------------------- forward
    def rotary_embedding(self, latent_frames: int, latent_height: int, latent_width: int, device: torch.device):
        """CogVideoX 1.0's 3D RoPE for a latent grid, computed as diffusers' CogVideoX pipelines do."""
        config = self.transformer.config
        if not config.use_rotary_positional_embeddings:
            return None
        p = config.patch_size
        grid_h, grid_w = latent_height // p, latent_width // p
        base_h, base_w = config.sample_height // p, config.sample_width // p
        # Fit the grid into the base grid keeping aspect ratio, centred (diffusers' get_resize_crop_region_for_grid).
        if grid_h / grid_w > base_h / base_w:
            resize_h, resize_w = base_h, int(round(base_h / grid_h * grid_w))
        else:
            resize_h, resize_w = int(round(base_w / grid_w * grid_h)), base_w
        top, left = int(round((base_h - resize_h) / 2.0)), int(round((base_w - resize_w) / 2.0))
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=((top, left), (top + resize_h, left + resize_w)),
            grid_size=(grid_h, grid_w),
            temporal_size=latent_frames,
            device=device,
        )

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        injection: PreparedInjection = NO_INJECTION,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from ``latents`` ``[B, f, C_in, h, w]`` (noisy latent plus any input_concat channels).

        ``image_rotary_emb`` defaults to the adapter's own RoPE for this grid; it is a
        parameter so that a caller holding the pipeline's embedding can pass it through.
        """
        model = self.transformer
        batch, frames, channels, height, width = latents.shape
        if channels != model.patch_embed.proj.in_channels:
            raise ValueError(
                f"The transformer expects {model.patch_embed.proj.in_channels} input channels but got {channels}; "
                f"call set_input_channels() with the plan's extra input_concat channels first."
            )
        if image_rotary_emb is None:
            image_rotary_emb = self.rotary_embedding(frames, height, width, latents.device)
        p = model.config.patch_size
        injection = injection.with_token_grid((frames, height // p, width // p))

        t_emb = model.time_proj(timestep).to(dtype=latents.dtype)
        temb = model.time_embedding(t_emb, timestep_cond)
        tokens = model.embedding_dropout(model.patch_embed(text_embeddings, latents))
        text_length = text_embeddings.shape[1]
        text_tokens, video_tokens = tokens[:, :text_length], tokens[:, text_length:]
        reference = self._reference_stream(injection, (frames, height // p, width // p), temb, timestep_cond)
        reference_tokens = reference.tokens if reference is not None else None
        # An attention exclusion: one mask over (text, video) queries x (text, video, reference) keys for every block.
        reference_keys = reference.num_tokens if reference is not None else 0
        attention_mask = self.video_attention_mask(
            injection, (frames, height // p, width // p), text_length, reference_keys
        )

        for index, block in enumerate(model.transformer_blocks):
            arguments = (index, block, video_tokens, text_tokens, temb, image_rotary_emb, injection)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                video_tokens, text_tokens, reference_tokens = checkpoint(
                    self._run_block, *arguments, reference, reference_tokens, attention_mask, use_reentrant=False
                )
            else:
                video_tokens, text_tokens, reference_tokens = self._run_block(
                    *arguments, reference, reference_tokens, attention_mask
                )

        # The reference tokens end here: the output head sees the video tokens only.
        video_tokens = model.norm_final(video_tokens)
        video_tokens = model.norm_out(video_tokens, temb=temb)
        video_tokens = model.proj_out(video_tokens)
        output = video_tokens.reshape(batch, frames, height // p, width // p, -1, p, p)
        return output.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    @staticmethod
    def _run_block(
        index: int,
        block: nn.Module,
        video: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        injection: PreparedInjection,
        reference: ReferenceStream | None = None,
        reference_tokens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """diffusers' CogVideoXBlock.forward, with the three in-block sites called explicitly.

        With ``reference`` (site sequence_concat) the reference tokens join the joint attention and run
        norm/FFN with their own modulation; in-block sites see video only. With ``attention_mask`` (an
        attention exclusion) the joint attention's text and video queries take it (``_joint_attention``).
        """
        text_length = text.shape[1]
        video = injection.apply(Site.PRE_ATTN, index, video)

        norm_video, norm_text, gate_msa, text_gate_msa = block.norm1(video, text, temb)
        if reference is None and attention_mask is None:  # diffusers' own attention processor
            attn_video, attn_text = block.attn1(
                hidden_states=norm_video, encoder_hidden_states=norm_text, image_rotary_emb=rotary
            )
        else:
            attn_video, attn_text, attn_reference = _joint_attention(
                index, block, norm_video, norm_text, rotary, reference, reference_tokens, attention_mask
            )
            if reference_tokens is not None:
                reference_tokens = _reference_ffn(block, reference_tokens, *attn_reference, reference.modulation)
        video = video + gate_msa * attn_video
        text = text + text_gate_msa * attn_text

        video = injection.apply(Site.ATTN_FFN, index, video)

        norm_video, norm_text, gate_ff, text_gate_ff = block.norm2(video, text, temb)
        ff_output = block.ff(torch.cat([norm_text, norm_video], dim=1))
        video = video + gate_ff * ff_output[:, text_length:]
        text = text + text_gate_ff * ff_output[:, :text_length]

        video = injection.apply(Site.POST_ATTN, index, video)
        return video, text, reference_tokens

    # ------------------------------------------------------- sequence_concat
    def _reference_stream(
        self,
        injection: PreparedInjection,
        video_grid: tuple[int, int, int],
        temb: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
    ) -> ReferenceStream | None:
        """The reference tokens, their rotary embedding and their time embedding (site sequence_concat)."""
        prepared = injection.reference
        if prepared is None:
            return None
        if prepared.cache is not None:  # the blocks read cached keys and values: nothing to embed
            return ReferenceStream(prepared.injector, None, None, None, prepared.cache)
        model, injector = self.transformer, prepared.injector
        grid = None
        if prepared.is_latent:
            reference = prepared.value.to(temb.dtype)
            batch, frames, channels, height, width = reference.shape
            extra = model.patch_embed.proj.in_channels - channels  # input_concat channels: zero for the reference
            if extra:
                reference = torch.cat([reference, reference.new_zeros(batch, frames, extra, height, width)], dim=2)
            embedded = model.patch_embed.proj(reference.flatten(0, 1))  # [B * f, D, h', w'] as CogVideoXPatchEmbed
            grid = (frames, *embedded.shape[-2:])
            tokens = embedded.unflatten(0, (batch, frames)).flatten(3).transpose(2, 3).flatten(1, 2)
            tokens = model.embedding_dropout(tokens)
        else:
            tokens = prepared.value.to(temb.dtype)
        if injector.reference_timestep is None:
            modulation = temb
        else:
            clean = torch.full((tokens.shape[0],), injector.reference_timestep, device=temb.device)
            modulation = model.time_embedding(model.time_proj(clean).to(temb.dtype), timestep_cond)
        rotary = None
        if model.config.use_rotary_positional_embeddings:
            rotary = self.rotary_at(*reference_grid_positions(injector, video_grid, grid, tokens.shape[1]))
            rotary = tuple(r.to(tokens.device) for r in rotary)
        return ReferenceStream(injector, tokens, rotary, modulation)

    def rotary_at(self, frame: torch.Tensor, row: torch.Tensor, column: torch.Tensor):
        """CogVideoX's 3D RoPE (cos, sin) ``[N, head_dim]`` at explicit (frame, row, column) positions.

        The same frequencies as ``get_3d_rotary_pos_embed`` (a quarter of the head for time, 3/8 each
        for rows and columns), at any position, e.g. frame -1 for a reference before the video.
        """
        dim = self.transformer.config.attention_head_dim
        parts = [
            get_1d_rotary_pos_embed(size, positions, use_real=True)
            for size, positions in ((dim // 4, frame), (dim // 8 * 3, row), (dim // 8 * 3, column))
        ]
        return torch.cat([cos for cos, _ in parts], dim=-1), torch.cat([sin for _, sin in parts], dim=-1)

    @torch.no_grad()
    def cache_reference(self, injection: PreparedInjection, latent_shape: tuple[int, ...]) -> PreparedInjection:
        """Run the static reference through every block once, keeping each block's keys and values."""
        prepared = injection.reference
        if prepared is None or not prepared.injector.reference_is_static:
            raise ValueError(
                "cache_reference needs a reference that cannot depend on the noisy video "
                "(sequence_concat with attention=reference_isolated and timestep=0)."
            )
        model = self.transformer
        device = model.patch_embed.proj.weight.device
        # The video's time embedding is not read by a static reference (it has its own, at timestep 0).
        temb = model.time_embedding(model.time_proj(torch.zeros(prepared.value.shape[0], device=device)))
        uncached = injection.with_reference(dataclasses.replace(prepared, cache=None))
        p = model.config.patch_size
        stream = self._reference_stream(uncached, (latent_shape[1], latent_shape[3] // p, latent_shape[4] // p), temb)
        tokens, cached = stream.tokens, []
        for index, block in enumerate(model.transformer_blocks):
            query, key, value, gate_msa = _reference_heads(index, block, tokens, stream)
            cached.append((key, value))
            attended = attend_with_reference(None, (key, value), query, isolated=True)[1]
            tokens = _reference_ffn(block, tokens, attended, gate_msa, stream.modulation)
        return injection.with_reference(dataclasses.replace(prepared, cache=cached))


def _heads(attn: nn.Module, projected: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v ``[B, N, heads * d]`` -> ``[B, heads, N, d]`` with CogVideoX's QK LayerNorm."""
    query, key, value = (projected[n].unflatten(2, (attn.heads, -1)).transpose(1, 2) for n in ("q", "k", "v"))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def _reference_heads(index: int, block: nn.Module, tokens: torch.Tensor, reference: ReferenceStream):
    """The reference tokens' modulated norm1, q/k/v (with the injector's residuals), QK norm and RoPE."""
    attn = block.attn1
    # CogVideoXLayerNormZero on the reference alone (no text), with the reference's own time embedding.
    normed, _, gate_msa, _ = block.norm1(tokens, tokens[:, :0], reference.modulation)
    projections = {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}
    query, key, value = _heads(attn, project_reference(reference, index, projections, normed))
    if reference.rotary is not None:
        query, key = apply_rotary_emb(query, reference.rotary), apply_rotary_emb(key, reference.rotary)
    return query, key, value, gate_msa


def _reference_ffn(
    block: nn.Module, tokens: torch.Tensor, attended: torch.Tensor, gate_msa: torch.Tensor, modulation: torch.Tensor
) -> torch.Tensor:
    """The reference tokens after the attention's gated residual, norm2, the FFN and its gated residual."""
    attention = block.attn1.to_out[1](block.attn1.to_out[0](attended.transpose(1, 2).flatten(2)))
    tokens = tokens + gate_msa * attention
    normed, _, gate_ff, _ = block.norm2(tokens, tokens[:, :0], modulation)
    return tokens + gate_ff * block.ff(normed)


def _joint_attention(
    index: int,
    block: nn.Module,
    norm_video: torch.Tensor,
    norm_text: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    reference: ReferenceStream | None,
    reference_tokens: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """CogVideoX's joint attention over (text, video), plus the reference tokens when there are any.

    Text and video queries read every key, except the pairs ``attention_mask`` (``[B, 1, T + N, T + N + N_ref]``,
    an attention exclusion) forbids; the reference's queries read every key (``full``) or only the
    reference's (``reference_isolated``), unmasked. Returns the attention outputs of video, text and
    reference (the latter before ``to_out``, with its attention gate; None without a reference or when its
    keys and values come from the cache).
    """
    attn, text_length = block.attn1, norm_text.shape[1]
    joint = torch.cat([norm_text, norm_video], dim=1)
    query, key, value = _heads(attn, {"q": attn.to_q(joint), "k": attn.to_k(joint), "v": attn.to_v(joint)})
    if rotary is not None:  # RoPE on the video tokens only, as diffusers' CogVideoX attention processor
        query = torch.cat([query[:, :, :text_length], apply_rotary_emb(query[:, :, text_length:], rotary)], dim=2)
        key = torch.cat([key[:, :, :text_length], apply_rotary_emb(key[:, :, text_length:], rotary)], dim=2)
    if reference is None:
        joint_out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        reference_out = gate_msa = None
    else:
        if reference_tokens is None:
            reference_query, reference_key_value, gate_msa = None, reference.cached[index], None
        else:
            reference_query, *reference_key_value, gate_msa = _reference_heads(
                index, block, reference_tokens, reference
            )
        joint_out, reference_out = attend_with_reference(
            (query, key, value), tuple(reference_key_value), reference_query, reference.isolated, attention_mask
        )
    joint_out = attn.to_out[1](attn.to_out[0](joint_out.transpose(1, 2).flatten(2)))
    return joint_out[:, text_length:], joint_out[:, :text_length], (reference_out, gate_msa)


class CogVideoXDPMSchedule(DiffusersSchedule):
    """``CogVideoXDPMScheduler``: each step also reads the previous step's x0 estimate and timestep."""

    def __init__(self, scheduler: CogVideoXDPMScheduler, num_inference_steps: int, device: torch.device | str):
        super().__init__(scheduler, num_inference_steps, device)
        self.old_pred_original_sample: torch.Tensor | None = None

    def step(
        self,
        prediction: torch.Tensor,
        step_index: int,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        previous_timestep = self.timesteps[step_index - 1] if step_index > 0 else None
        latents, self.old_pred_original_sample = self.scheduler.step(
            prediction,
            self.old_pred_original_sample,
            self.timesteps[step_index],
            previous_timestep,
            latents,
            generator=generator,
            return_dict=False,
        )
        return latents

    def noise_to_step(self, clean: torch.Tensor, noise: torch.Tensor, step_index: int) -> torch.Tensor:
        # DDPM forward process at that timestep; the first step then runs first-order (no previous x0 estimate).
        self.old_pred_original_sample = None
        timesteps = self.timesteps[step_index].expand(clean.shape[0])
        return self.scheduler.add_noise(clean, noise.to(clean), timesteps)


def _nearest_multiples(value: int, step: int) -> str:
    below = max(step, value // step * step)
    return str(below) if below == value else f"{below} or {below + step}"
