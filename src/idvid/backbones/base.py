"""The backbone contract: everything the core may ask of a DiT family, and nothing more.

The training module, the sampler, the feature cache, ``sample``, ``evaluate`` and ``export``
reach a backbone only through the members below. A family's internals (its scheduler, its VAE
normalisation, the name of its patch embedding, its LoRA file format) stay in its adapter
(``idvid.backbones.cogvideox``, ``idvid.backbones.wan``); a third party adds a family by
subclassing :class:`Backbone` in a plugin package and registering it with
``idvid.registry.register_backbone`` (see CONTRIBUTING.md, "Writing a backbone").

What the core does with a backbone, in full::

    clean = backbone.encode_video(video, random)                      # normalised latents
    noised = backbone.add_training_noise(clean, random)               # NoisedLatents
    prediction = backbone(noised.noisy (+ input_concat channels), noised.timesteps, text, injection)
    loss = weighted_mse(backbone.to_target_space(prediction, noised), noised.target, noised.weight, mask)

    schedule = backbone.sampling_schedule(num_inference_steps, device)  # a DenoisingSchedule
    latents = schedule.prepare_initial_noise(noise)
    for i, t in enumerate(schedule.timesteps):
        prediction = backbone(schedule.scale_model_input(latents, t), t, text, injection)   # (+ text-only CFG)
        latents = schedule.step(prediction, i, latents, generator)
    video = backbone.decode_latents(latents)

Latents are always ``[B, f, C, h, w]`` (frames before channels) outside an adapter.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from idvid.backbones.attention_exclusion import surround_video_mask, video_attention_mask
from idvid.backbones.codecs import LatentCodec
from idvid.backbones.info import BackboneInfo
from idvid.errors import ConfigError
from idvid.injection.plan import NO_INJECTION, PreparedInjection
from idvid.randomness import BatchRandom

#: ``<word>`` in a caption: a placeholder for learned text tokens (``Backbone.expand_placeholders``)
PLACEHOLDER_PATTERN = re.compile(r"<[A-Za-z][\w-]*>")

__all__ = ["Backbone", "BackboneInfo", "DenoisingSchedule", "DiffusersSchedule", "NoisedLatents"]


def _not_implemented(owner: object, member: str, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(owner).__name__}.{member} is not implemented: a backbone must {what} "
        f"(see idvid.backbones.base.Backbone.{member})."
    )


@dataclass
class NoisedLatents:
    """One training step's noised input and what the loss compares against (``Backbone.add_training_noise``)."""

    noisy: torch.Tensor  # the transformer's latent input, [B, f, C, h, w] (input_concat channels are added later)
    timesteps: torch.Tensor  # what the transformer is called with, [B], on the latents' device
    target: torch.Tensor  # what the loss compares against, in the space of Backbone.to_target_space
    weight: torch.Tensor  # the loss weight of each sample, [B], float32


class DenoisingSchedule:
    """The denoising steps of ONE sampling run; it holds any multistep state (a solver's history).

    Get a fresh one from ``Backbone.sampling_schedule`` for every video. The sampler calls, in order:
    ``prepare_initial_noise`` once, then for each ``timesteps[i]``: ``scale_model_input``, the
    backbone's forward (at ``timesteps[i]``), and ``step(prediction, i, latents, generator)``.
    """

    timesteps: torch.Tensor  # the model timesteps of the run, first (noisiest) to last

    def prepare_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise ``[B, f, C, h, w]`` -> the first latents (e.g. times ``init_noise_sigma``)."""
        return noise

    def scale_model_input(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The latents as the model reads them at ``timestep`` (identity for most schedulers)."""
        return latents

    def step(
        self,
        prediction: torch.Tensor,
        step_index: int,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The latents after step ``step_index``, from the (guided) ``prediction`` at ``timesteps[step_index]``."""
        raise _not_implemented(self, "step", "turn a prediction into the next, less noisy latents")

    def noise_to_step(self, clean: torch.Tensor, noise: torch.Tensor, step_index: int) -> torch.Tensor:
        """Clean latents noised to the level of ``timesteps[step_index]``; the run then begins at that step.

        Partial denoising (SDEdit, video-to-video refinement) starts here instead of at
        ``prepare_initial_noise``: ``noise`` is standard normal, shaped like ``clean`` ``[B, f, C, h, w]``,
        and the sampler runs the steps ``step_index, ..., len(timesteps) - 1``.
        """
        raise _not_implemented(self, "noise_to_step", "noise clean latents to one of its steps (partial denoising)")


class DiffusersSchedule(DenoisingSchedule):
    """A diffusers scheduler whose ``step(model_output, timestep, sample)`` needs nothing else.

    (Euler, UniPC, DPM-Solver multistep and the flow-matching ones do; CogVideoX's DPM scheduler
    does not, and its adapter overrides ``step``.) ``scheduler`` is used as a template: the schedule
    runs on its own copy, so two sampling runs never share a solver's state. The generator goes only
    to schedulers whose ``step`` takes one (UniPC's refuses the keyword; stochastic ones draw from it).
    """

    def __init__(self, scheduler: Any, num_inference_steps: int, device: torch.device | str | None = None):
        self.scheduler = type(scheduler).from_config(scheduler.config)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self._step_takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters

    def prepare_initial_noise(self, noise: torch.Tensor) -> torch.Tensor:
        # Flow-matching schedulers (flow-match Euler) have neither attribute: noise and input are unscaled.
        return noise * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def scale_model_input(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.scheduler, "scale_model_input"):
            return latents
        return self.scheduler.scale_model_input(latents, timestep)

    def step(
        self,
        prediction: torch.Tensor,
        step_index: int,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        timestep = self.timesteps[step_index]
        extra = {"generator": generator} if self._step_takes_generator else {}
        return self.scheduler.step(prediction, timestep, latents, return_dict=False, **extra)[0]


class Backbone(nn.Module):
    """A DiT family: its transformer with the injection sites, its frozen encoders, its objective and sampler.

    An adapter sets these attributes in ``__init__`` and implements the methods below that raise
    ``NotImplementedError`` here. It builds either from config (tiny random models for the demo and
    tests) or from ``pretrained``, one local diffusers pipeline folder; nothing is downloaded.
    """

    pretrained: str | None  # the local folder the frozen parts came from (None = built from config)
    transformer: nn.Module  # the trained network: LoRA, widening, full fine-tune and export act on it
    vae: nn.Module  # frozen; the feature cache fingerprints it
    text_encoder: nn.Module  # frozen; the feature cache fingerprints it and reads its device
    tokenizer: Any  # a transformers tokenizer of the text encoder (``add_text_tokens`` extends it)
    gradient_checkpointing: bool  # recompute each block in backward (the forward must honour it)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # default LoRA target module names
    #: site name -> where that site is in this family's block, in words (``python -m idvid plugins`` prints it)
    site_locations: dict[str, str] = {}
    #: the attention policies of reference tokens (site ``sequence_concat``) the forward honours; empty: the
    #: backbone does not implement the site (a plan with a sequence_concat injector is refused at start-up)
    reference_attention: tuple[str, ...] = ()
    #: the forward applies ``injection.attention_exclusion`` in its blocks' self-attention (False: a batch that
    #: asks for one is refused by the training module, never silently ignored)
    honours_attention_exclusion: bool = False

    # ------------------------------------------------------------------ shape
    @property
    def info(self) -> BackboneInfo:
        """The sizes injectors and conditioners are built for."""
        raise _not_implemented(self, "info", "describe its sizes as a BackboneInfo")

    @property
    def frozen_modules(self) -> dict[str, nn.Module]:
        """Attribute name -> part that never trains; left out of checkpoints when it comes from ``pretrained``."""
        return {"vae": self.vae, "text_encoder": self.text_encoder}

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for module in self.frozen_modules.values():
            module.eval()  # frozen encoders stay in eval mode (no dropout) while the transformer trains
        return self

    @property
    def default_video_size(self) -> tuple[int, int, int]:
        """``(num_frames, height, width)`` that ``sample`` and ``ablate`` use when none is given."""
        raise _not_implemented(
            self, "default_video_size", "say which (num_frames, height, width) it samples by default"
        )

    def latent_shape(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """The latent ``(B, f, C, h, w)`` of a video of this size.

        Raises ValueError naming the family's frame-count and size rule and the nearest valid values.
        """
        raise _not_implemented(self, "latent_shape", "map a video size to its latent shape (and refuse invalid sizes)")

    @property
    def codec(self) -> LatentCodec | None:
        """The weight-free codec that stands in for the VAE (``idvid.backbones.codecs``), or None (a real VAE)."""
        return self.vae if isinstance(self.vae, LatentCodec) else None

    # ------------------------------------------------------------ input_concat
    @property
    def input_layer(self) -> nn.Module:
        """The patch-embedding layer that reads the latent channels (it trains whenever it was widened)."""
        raise _not_implemented(self, "input_layer", "name the layer that reads the input channels")

    def set_input_channels(self, extra_channels: int) -> None:
        """Make the input layer take ``info.latent_channels + extra_channels`` channels.

        Widening copies the old weights and zero-initialises the new input channels, so the output is
        bit-identical until they train; a model that already has that many channels is kept as it is.
        """
        raise _not_implemented(self, "set_input_channels", "widen its input layer for input_concat injectors")

    # -------------------------------------------------------------------- data
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> text embeddings ``[B, L, info.text_hidden_size]`` on the text encoder's device.

        An adapter first calls ``expand_placeholders(captions)``. It does not encode under ``torch.no_grad``:
        the text encoder is frozen, so autograd records nothing unless learned token rows need gradients.
        """
        raise _not_implemented(self, "encode_text", "encode captions")

    # ------------------------------------------------------------- text tokens
    # New tokens with learned embedding rows (site text_tokens). The defaults work for every text encoder
    # that is a transformers PreTrainedModel with a transformers tokenizer (T5, UMT5, the demo's word level).
    def add_text_tokens(self, tokens: Sequence[str], placeholder: str | None = None) -> list[int]:
        """Make each of ``tokens`` one token of the tokenizer, never split, and return their ids.

        Their ids may pass the end of the text encoder's embedding table (or land on spare rows): the
        caller gives their rows with ``set_text_token_embeddings``. With ``placeholder``, every caption's
        ``placeholder`` expands to the tokens, separated by spaces, before tokenizing.
        """
        tokens = list(tokens)
        taken = [t for t in tokens if t in self.tokenizer.get_vocab()]
        if taken:
            raise ValueError(
                f"Text tokens {taken} are already in the tokenizer's vocabulary; choose token strings it does not "
                f"have (e.g. <my_id_0>), so that the learned rows never replace a word the model knows."
            )
        self.tokenizer.add_tokens(tokens, special_tokens=False)
        if placeholder is not None:
            self.text_placeholders[placeholder] = " ".join(tokens)
        return self.tokenizer.convert_tokens_to_ids(tokens)

    @property
    def text_placeholders(self) -> dict[str, str]:
        """Placeholder -> its expansion, applied to every caption by ``expand_placeholders``."""
        return self.__dict__.setdefault("_text_placeholders", {})  # adapters need not set it up

    def expand_placeholders(self, captions: Sequence[str]) -> list[str]:
        """Captions with every registered placeholder expanded; one left over is refused.

        A ``<word>`` that is neither a placeholder of this model nor a token of its tokenizer would be
        encoded as meaningless pieces, silently: it names text tokens the model does not have.
        """
        captions = list(captions)
        if self.text_placeholders:
            pattern = re.compile("|".join(re.escape(p) for p in sorted(self.text_placeholders, key=len, reverse=True)))
            captions = [pattern.sub(lambda m: self.text_placeholders[m.group(0)], c) for c in captions]
        vocabulary = None
        for caption in captions:
            for word in PLACEHOLDER_PATTERN.findall(caption):
                vocabulary = vocabulary if vocabulary is not None else self.tokenizer.get_vocab()
                if word not in vocabulary:
                    raise ConfigError(
                        f"The prompt {caption!r} names {word}, but this model has no text tokens for it "
                        f"(its placeholders: {sorted(self.text_placeholders) or 'none'}).",
                        "Use a model trained with learned text tokens for that placeholder (a text_tokens "
                        "injector, e.g. an ID-token experiment), load exported ones into it (sample --load "
                        "FORMAT=FILE), or remove it from the prompt.",
                    )
        return captions

    @property
    def text_token_embeddings(self) -> nn.Module:
        """The token-embedding table the text encoder reads (``ids [B, L] -> [B, L, D]``)."""
        return self.text_encoder.get_input_embeddings()

    def set_text_token_embeddings(self, embeddings: nn.Module) -> None:
        """Make the text encoder read its token embeddings from ``embeddings`` (e.g. a table plus learned rows)."""
        self.text_encoder.set_input_embeddings(embeddings)

    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, 3, H, W]`` in [-1, 1] -> the VAE posterior's ``(mean, std)``, raw (unnormalised).

        Their layout is the adapter's own (dim 0 is the batch); only ``latents_from_posterior`` reads
        them. The feature cache stores them, so a cached posterior gives exactly ``encode_video``'s latents.
        """
        raise _not_implemented(self, "encode_posterior", "encode videos into its VAE posterior (mean, std)")

    def normalize_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """A raw VAE sample (``encode_posterior``'s layout) -> normalised latents ``[B, f, C, h, w]``.

        The family's own normalisation: CogVideoX multiplies by one scaling factor, Wan normalises each
        channel with the VAE's latents mean and std. ``decode_latents`` undoes it.
        """
        raise _not_implemented(self, "normalize_latents", "apply its VAE latent normalisation")

    def latents_from_posterior(
        self, mean: torch.Tensor, std: torch.Tensor, random: BatchRandom | None = None
    ) -> torch.Tensor:
        """Normalised latents from a posterior: a sample drawn through ``random``, or the mean when None."""
        raw = mean if random is None else mean + std * random.randn_like(mean)
        return self.normalize_latents(raw)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, random: BatchRandom | None = None) -> torch.Tensor:
        """``[B, F, 3, H, W]`` in [-1, 1] -> normalised latents ``[B, f, C, h, w]`` (posterior sample or mean)."""
        mean, std = self.encode_posterior(video)
        return self.latents_from_posterior(mean, std, random)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, f, C, h, w]`` -> video ``[B, F, 3, H, W]`` clamped to [-1, 1]."""
        raise _not_implemented(self, "decode_latents", "decode latents into video")

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_embeddings: torch.Tensor,
        injection: PreparedInjection = NO_INJECTION,
    ) -> torch.Tensor:
        """The transformer's prediction ``[B, f, C_out, h, w]`` for ``latents`` ``[B, f, C_in, h, w]``.

        ``C_in`` includes any input_concat channels. The block loop calls
        ``injection.apply(Site.X, block_index, video_tokens)`` at each in-block site (the adapter's
        docstring says where each site is in its block) and honours ``gradient_checkpointing``.
        With ``injection.reference`` (site ``sequence_concat``) it appends the reference tokens, with their
        positions, timestep and attention policy, and drops them before the output head
        (``idvid.backbones.reference_tokens``). With ``injection.attention_exclusion`` (when the family
        ``honours_attention_exclusion``) every block's self-attention takes ``video_attention_mask`` over its
        video query x video key pairs only; without one it runs exactly its usual attention.
        """
        raise _not_implemented(self, "forward", "run its transformer with the injection sites")

    def video_attention_mask(
        self,
        injection: PreparedInjection,
        token_grid: tuple[int, int, int],
        leading_tokens: int = 0,
        trailing_keys: int = 0,
    ) -> torch.Tensor | None:
        """``injection.attention_exclusion`` on the video tokens laid out as ``token_grid`` (frames, rows, columns).

        A boolean SDPA mask, True where a query may attend to a key, for an attention call whose queries are
        ``leading_tokens`` (e.g. a joint attention's text) then the video, and whose keys are those plus
        ``trailing_keys`` (e.g. reference keys): ``[B, 1, leading + N, leading + N + trailing]``, excluding only
        video x video pairs. None when the injection excludes nothing (no exclusion, or empty regions): the
        forward then runs its usual attention. A token is in a region when any of its pixels is
        (``idvid.backbones.attention_exclusion``). One mask per forward, built once and read by every block.
        """
        exclusion = injection.attention_exclusion
        if exclusion is None:
            return None
        info = self.info
        mask = video_attention_mask(exclusion, token_grid, info.vae_temporal_compression, info.patch_size_t)
        return None if mask is None else surround_video_mask(mask, leading_tokens, trailing_keys)

    def cache_reference(self, injection: PreparedInjection, latent_shape: tuple[int, ...]) -> PreparedInjection:
        """The same injection with the reference's per-block keys and values computed once, for sampling.

        ``latent_shape`` is the sampled video's ``(B, f, C, h, w)`` (reference positions may follow its frames).
        Only for a reference that cannot depend on the noisy video (``reference_is_static``); the blocks
        then read the cached keys and values at every step, and the result equals the uncached forward.
        """
        raise _not_implemented(self, "cache_reference", "cache a static reference's keys and values")

    # ------------------------------------------------------ training objective
    def add_training_noise(
        self, clean: torch.Tensor, random: BatchRandom, t_fraction: float | None = None
    ) -> NoisedLatents:
        """Noise clean latents as the family trains: its timestep sampling, noising, target and weight.

        Every draw goes through ``random`` (exact resume, data parallel). ``t_fraction`` in [0, 1] puts
        every sample at that fraction of the training schedule (0 = least noise): the held-out loss at
        fixed quantiles. The draws are the same with and without it, so quantile losses share their noise.
        """
        raise _not_implemented(self, "add_training_noise", "noise clean latents for training")

    def to_target_space(self, prediction: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
        """The model's output in the space of ``noised.target`` (CogVideoX: v -> x0 estimate)."""
        return prediction

    # ---------------------------------------------------------------- sampling
    def sampling_schedule(self, num_inference_steps: int, device: torch.device | str) -> DenoisingSchedule:
        """A fresh schedule of ``num_inference_steps`` denoising steps (its state belongs to one run)."""
        raise _not_implemented(self, "sampling_schedule", "provide its denoising steps for sampling")

    # -------------------------------------------------------------------- LoRA
    def save_lora(self, folder: Path) -> Path:
        """Write the transformer's LoRA adapter as the family's diffusers pipeline loads it.

        Returns the written ``folder/pytorch_lora_weights.safetensors``.
        """
        raise _not_implemented(self, "save_lora", "export its LoRA weights in its diffusers format")
