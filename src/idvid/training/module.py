"""The LightningModule: a swappable DiT backbone, conditioners, an injection plan and the recipe.

Everything method-specific arrives by registry name from config; this module only
knows sites and contracts. Randomness of a step (timesteps, noise, recipe coins)
comes from a generator seeded by ``(seed, global_step, batch_idx)`` and is drawn for
the global batch (``idvid.randomness.BatchRandom``), so resuming from a checkpoint
reproduces the uninterrupted run's losses exactly and a data-parallel run draws what a
single process with the same global batch draws.
"""

from __future__ import annotations

import gc
import itertools
import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
import lightning as L
import numpy as np
import torch
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from idvid.backbones.lora import add_lora, lora_parameters
from idvid.conditioning.base import check_sampling_inputs, run_conditioners
from idvid.errors import ConfigError
from idvid.injection import InputConcatInjector
from idvid.injection.attention_exclusion import KEYS_KEY, QUERIES_KEY, AttentionExclusion
from idvid.injection.plan import InjectionPlan
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build
from idvid.sampling.noise_priors import DEFAULT_NOISE_PRIOR, build_noise_prior
from idvid.sampling.sampler import sample_latents
from idvid.training.checkpointing import save_checkpoint_atomically
from idvid.training.feature_cache import FeatureCache
from idvid.training.guard import DivergenceError, NonFiniteGuard
from idvid.training.recipe import Recipe
from idvid.training.visuals import log_generated_videos

log = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("all", "injectors", "lora")


def _plain(config: Any) -> Any:
    return OmegaConf.to_container(config, resolve=True) if isinstance(config, (DictConfig, ListConfig)) else config


def _build_named(kind: PluginKind, node: Mapping[str, Any], *first: Any) -> Any:
    node = dict(node)
    if "name" not in node:
        raise ValueError(
            f"A {kind.value} config node needs `name` (a registered {kind.value}); got keys {sorted(node)}."
        )
    name = node.pop("name")
    return build(kind, name, *first, **node)


class IdentityVideoModule(L.LightningModule):
    def __init__(
        self,
        backbone: Mapping[str, Any],
        conditioners: Mapping[str, Any] | None = None,
        injectors: Mapping[str, Any] | None = None,
        recipe: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optimizer: Any = None,
        lr_scheduler: Mapping[str, Any] | None = None,
        trainable: str | list[str] = "all",
        lora: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        non_finite: Mapping[str, Any] | None = None,
        seed: int = 0,
        feature_cache: str | None = None,
    ):
        super().__init__()
        # Plain containers, so that checkpoints hold no OmegaConf objects (they load with weights_only).
        backbone, conditioners, injectors = _plain(backbone), _plain(conditioners) or {}, _plain(injectors) or {}
        recipe, loss, optimizer = _plain(recipe) or {}, _plain(loss) or {"name": "weighted_mse"}, _plain(optimizer)
        lr_scheduler, validation = _plain(lr_scheduler) or {"name": "constant"}, _plain(validation) or {}
        non_finite, lora, trainable = _plain(non_finite) or {}, _plain(lora) or {}, _plain(trainable)
        self.save_hyperparameters()
        self.seed = seed
        self.backbone = _build_named(PluginKind.BACKBONE, backbone)
        info = self.backbone.info
        self.conditioners = nn.ModuleDict(
            {label: _build_named(PluginKind.CONDITIONER, node, info) for label, node in conditioners.items() if node}
        )
        self.plan = InjectionPlan.from_config(injectors, info)
        self.plan.check_conditions(InjectionPlan.produced_conditions(self.conditioners))
        self.plan.check_backbone(self.backbone)  # a sequence_concat policy the backbone cannot run is refused here
        self.backbone.set_input_channels(self.plan.extra_input_channels)
        self.plan.attach(self.backbone)  # text_tokens injectors add their tokens to the text encoder
        for conditioner in self.conditioners.values():  # e.g. a trainable reference pass copies the transformer
            conditioner.attach(self.backbone)
        self.recipe = Recipe.from_config(recipe)
        self.loss_fn = _build_named(PluginKind.LOSS, loss)
        self.optimizer_config = optimizer
        self.lr_scheduler_config = lr_scheduler
        self.validation = {
            "num_inference_steps": 4,
            "guidance_scale": 6.0,
            "sample": True,
            "loss_quantiles": [],
            "frequency": None,
            "noise_prior": DEFAULT_NOISE_PRIOR,
            **validation,
        }
        build_noise_prior(self.validation["noise_prior"])  # a bad prior is a start-up error, not one mid-run
        self.guard = NonFiniteGuard(**non_finite)
        # Text embeddings and VAE posteriors on disk, reused by later runs (idvid.training.feature_cache).
        self.feature_cache = FeatureCache(feature_cache) if feature_cache else None
        if trainable == "lora":
            targets = lora.get("targets") or self.backbone.lora_targets
            add_lora(self.backbone.transformer, **{**lora, "targets": list(targets)})
        self._set_trainable(trainable)

    # ------------------------------------------------------------- parameters
    def _set_trainable(self, trainable: str | list[str]) -> None:
        if isinstance(trainable, (list, tuple)):
            return self._train_only_injectors(list(trainable))
        if trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable={trainable!r}; choose one of {', '.join(TRAINABLE_CHOICES)}.")
        self.requires_grad_(False)
        self.plan.requires_grad_(True)
        for conditioner in self.conditioners.values():  # conditioners that train (in the graph) train with the plan
            conditioner.requires_grad_(conditioner.trainable)
        if trainable == "all":  # full fine-tune of the transformer, as ConsisID's released code does
            self.backbone.transformer.requires_grad_(True)
        for parameter in lora_parameters(self.backbone.transformer):  # trainable=lora: the adapters, not the base
            parameter.requires_grad_(True)
        # The widened input layer must learn to read the new channels even when the backbone is frozen.
        if trainable != "all" and self.plan.extra_input_channels:
            self.backbone.input_layer.requires_grad_(True)
        if not self.trainable_parameters():
            raise ValueError(
                f"model.trainable={trainable} leaves nothing to train: this experiment has no injectors with "
                f"parameters of their own. Use model.trainable=all or model.trainable=lora, or add an injector."
            )

    def _train_only_injectors(self, labels: list[str]) -> None:
        """``trainable: [label, ...]``: only these injectors train; the backbone (its widened input layer
        included), the other injectors and the conditioners stay as built or loaded (a later training stage
        that adds modules to a trained model, e.g. motion modules alone)."""
        unknown = [label for label in labels if label not in self.plan.injectors]
        if unknown or not labels:
            raise ConfigError(
                f"model.trainable={labels}: "
                + (f"{unknown} are not labels of this plan's injectors." if unknown else "lists no injector."),
                f"List labels of `injectors:` ({', '.join(self.plan.injectors) or 'none'}), or use one of "
                f"{', '.join(TRAINABLE_CHOICES)}.",
            )
        self.requires_grad_(False)
        for label in labels:
            self.plan.injectors[label].requires_grad_(True)
        if not self.trainable_parameters():
            raise ConfigError(f"model.trainable={labels}: these injectors have no parameters.", "List others.")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _frozen_prefixes(self) -> list[str]:
        """State-dict prefixes of frozen parts whose weights come from local folders.

        Those are rebuilt from the same folders when a checkpoint loads; storing them would make
        every checkpoint carry gigabytes that never change. Randomly initialised frozen parts (the
        demo's) cannot be rebuilt from anything, so they stay in the checkpoint.
        """
        prefixes = []
        if self.backbone.pretrained:
            prefixes += [f"backbone.{name}." for name in self.backbone.frozen_modules]
        prefixes += [f"conditioners.{label}." for label, c in self.conditioners.items() if c.pretrained]
        return prefixes

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = tuple(self._frozen_prefixes())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:  # DeepSpeed: its engine loads the (complete) module weights itself
            return
        prefixes, saved = tuple(self._frozen_prefixes() + self._added_prefixes(checkpoint)), checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(prefixes):
                saved.setdefault(key, value)
            # LoRA added to weights trained without it (init_from a full checkpoint with trainable=lora):
            # the saved weight is the wrapped layer's base, and the adapter starts as initialised (B = 0).
            elif ".base_layer." in key and key not in saved and key.replace(".base_layer.", ".") in saved:
                saved[key] = saved.pop(key.replace(".base_layer.", "."))
            elif ".lora_" in key:
                saved.setdefault(key, value)

    def _added_prefixes(self, checkpoint: Mapping[str, Any]) -> list[str]:
        """State-dict prefixes of the injectors and conditioners this module has and the checkpoint holds no
        weight of (``init_from`` with a config that adds them, a later training stage): they start as initialised.

        Told by the weights, not the hyper-parameters: Lightning overwrites those with the overrides given."""
        saved = checkpoint["state_dict"]

        def absent(prefix: str) -> bool:
            return not any(key.startswith(prefix) for key in saved)

        added_injectors = [label for label in self.plan.injectors if absent(f"plan.injectors.{label}.")]
        input_layer = next(name for name, module in self.named_modules() if module is self.backbone.input_layer)
        saved_input = saved.get(f"{input_layer}.weight")
        if saved_input is not None and saved_input.shape != self.backbone.input_layer.weight.shape:
            widening = [label for label, i in self.plan.injectors.items() if isinstance(i, InputConcatInjector)]
            raise ConfigError(
                f"The checkpoint's input layer reads {saved_input.shape[1]} channels; this plan's reads "
                f"{self.backbone.input_layer.weight.shape[1]} (input_concat injectors {widening}).",
                "Keep the checkpoint's input_concat injectors: add them in the first training stage; a later stage "
                "(init_from) may add in-block injectors and conditioners.",
            )
        added_conditioners = [label for label in self.conditioners if absent(f"conditioners.{label}.")]
        return [f"plan.injectors.{label}." for label in added_injectors] + [
            f"conditioners.{label}." for label in added_conditioners
        ]

    # ---------------------------------------------------------------- running
    def step_generator(self, batch_idx: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.global_step, batch_idx]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def batch_random(self, generator: torch.Generator) -> BatchRandom:
        trainer = self._trainer
        if trainer is None:
            return BatchRandom(generator)
        return BatchRandom(generator, rank=trainer.global_rank, world_size=trainer.world_size)

    def conditions_for(self, batch: Mapping[str, Any], random: BatchRandom, cache: Any = None) -> dict[str, Any]:
        # Frozen conditioners run under no_grad, trainable ones in the training graph (run_conditioners).
        return run_conditioners(self.conditioners, batch, self.backbone, random, cache)

    def compute_loss(
        self, batch: Mapping[str, Any], random: BatchRandom, t_fraction: float | None = None
    ) -> dict[str, torch.Tensor]:
        """The training loss of a batch; ``t_fraction`` fixes t for every sample at that fraction of the
        schedule (else the backbone's own timestep sampling)."""
        return self._denoising_loss(self._encode_inputs(batch, random), random, t_fraction)

    def _encode_inputs(self, batch: Mapping[str, Any], random: BatchRandom) -> dict[str, Any]:
        """The timestep-independent part of a step: latents, recipe choices, text and conditions."""
        cache = self.feature_cache if "video_key" in batch else None
        clean = (
            cache.encode_video(self.backbone, batch, random)
            if cache
            else self.backbone.encode_video(batch["video"], random)
        )
        batch = self.recipe.on_batch(batch, random)
        captions = self.recipe.on_captions(batch["caption"], random)
        # Text embeddings are not cached while learned token rows train: they change every step.
        text_cache = cache if cache and not self.plan.text_token_injectors else None
        text = text_cache.encode_text(self.backbone, captions) if text_cache else self.backbone.encode_text(captions)
        conditions = self.conditions_for(batch, random, cache)
        return {"clean": clean, "batch": batch, "text": text, "conditions": conditions}

    def _denoising_loss(
        self, inputs: Mapping[str, Any], random: BatchRandom, t_fraction: float | None
    ) -> dict[str, torch.Tensor]:
        backbone, clean, conditions = self.backbone, inputs["clean"], inputs["conditions"]
        # The backbone's training objective: how noise is added, what the loss compares, each sample's weight.
        noised = backbone.add_training_noise(clean, random, t_fraction)

        model_input = noised.noisy
        extra = self.plan.concat_latents(conditions, noised.noisy)
        if extra is not None:
            model_input = torch.cat([noised.noisy, self.recipe.on_input_latents(extra, random)], dim=2)
        injection = self.plan.prepare(
            conditions, random, lambda injector, state: self.recipe.on_injector_state(injector, state, random)
        )
        injection = injection.with_attention_exclusion(self._attention_exclusion(inputs["batch"]))
        prediction = backbone(model_input, noised.timesteps, inputs["text"], injection)

        mask = self.recipe.loss_mask(inputs["batch"], clean.shape, random).to(clean.device)
        loss = self.loss_fn(backbone.to_target_space(prediction, noised), noised.target, noised.weight, mask)
        return {"loss": loss, "prediction": prediction}

    def _attention_exclusion(self, batch: Mapping[str, Any]) -> AttentionExclusion | None:
        """The batch's video self-attention exclusion (written by a recipe step), refused on a backbone that
        would ignore it."""
        exclusion = AttentionExclusion.from_batch(batch)
        if exclusion is not None and not self.backbone.honours_attention_exclusion:
            raise ConfigError(
                f"The batch asks for an attention exclusion ({QUERIES_KEY}, {KEYS_KEY}), but the "
                f"{type(self.backbone).__name__} backbone does not apply one (honours_attention_exclusion is False).",
                "Use a backbone whose adapter applies one (`python -m idvid plugins` lists the backbones), or "
                "switch off the recipe step (or its option) that writes the two masks.",
            )
        return exclusion

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        generator = self.step_generator(batch_idx)
        # Plugins draw through `random`, but a backbone's or plugin's nn.Dropout draws from torch's
        # global RNG: seed it per step too, so a resumed run draws exactly what the uninterrupted run drew.
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        loss = self.compute_loss(batch, self.batch_random(generator))["loss"]
        finite = self._finite_on_all_ranks(loss)
        if finite:
            self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0], sync_dist=True)
        elif self._deepspeed_engine is not None:
            # DeepSpeed refuses a skipped backward. Its optimizer discards any step whose gradient norm is
            # not finite (every ZeRO stage and precision), which a non-finite loss guarantees; the skip is
            # counted in on_train_batch_end from the engine's own record.
            self._non_finite_loss = True
        else:
            self._non_finite_step("loss")
            return None  # Lightning skips backward and the optimizer step
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.trainable_parameters() if p.grad is not None]
        if not grads:  # the step's loss was skipped: Lightning still calls the optimizer, which has nothing to do
            return
        grad_norm = torch.stack(grads).norm()
        if not self._finite_on_all_ranks(grad_norm):
            for parameter in self.trainable_parameters():
                parameter.grad = None  # the optimizer then leaves every weight as it is
            self._non_finite_step("gradient")
            return
        self._good_step()
        self.log("train/grad_norm", grad_norm)

    @property
    def _deepspeed_engine(self) -> Any:
        return getattr(self.trainer.strategy, "deepspeed_engine", None) if self._trainer is not None else None

    def _apply_recipe_schedule(self) -> dict[str, float]:
        """The recipe's per-step schedule (e.g. coarse-to-fine), from global_step: a resumed run is in the
        right stage without extra state."""
        return self.recipe.at_step(self.plan, self.global_step)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for name, value in self._apply_recipe_schedule().items():
            self.log(f"train/{name}", float(value))
        self._non_finite_loss = False
        engine = self._deepspeed_engine
        self._engine_skipped_steps = engine.skipped_steps if engine is not None else 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # DeepSpeed keeps gradients inside its engine (p.grad stays None, on_before_optimizer_step sees
        # nothing): it decides on the step, and reports the norm and the skip.
        engine = self._deepspeed_engine
        if engine is None:
            return
        if engine.skipped_steps > self._engine_skipped_steps:
            # global_step already counts the step that was just discarded
            self._non_finite_step("loss" if self._non_finite_loss else "gradient", step=self.global_step - 1)
        elif not self._non_finite_loss:  # (a non-finite loss between accumulation boundaries is discarded later)
            self._good_step()
            if engine.get_global_grad_norm() is not None:
                self.log("train/grad_norm", float(engine.get_global_grad_norm()))

    # ------------------------------------------------------------ NaN guard
    def _finite_on_all_ranks(self, value: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(value).all())
        if self._trainer is None:
            return finite
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _good_step(self) -> None:
        self.guard.good_step()
        self._forget_step_values("train/skipped")  # a skip is logged from another hook: drop its 1.0
        self.log("train/skipped", 0.0)

    def _non_finite_step(self, what: str, step: int | None = None) -> None:
        step = self.global_step if step is None else step
        self.guard.bad_step()
        self.log("train/skipped", 1.0)
        self.log("train/non_finite_steps", float(self.guard.total), sync_dist=False)
        # A step skipped for its gradient did compute a finite loss, logged above; the rest would be stale.
        self._forget_step_values("train/grad_norm", *(["train/loss"] if what == "loss" else []))
        log.warning("step %d: non-finite %s, step skipped (%d in a row)", step, what, self.guard.consecutive)
        if self.guard.should_stop:
            path = Path(self.trainer.default_root_dir) / "checkpoints" / "last_good.ckpt"
            save_checkpoint_atomically(self.trainer, path)  # skipped steps changed nothing: the last good weights
            raise DivergenceError(
                f"{self.guard.consecutive} consecutive steps with a non-finite {what} (the last at step "
                f"{step}); training stopped. The last good weights are in {path}. Try a lower learning "
                f"rate, gradient clipping (trainer.gradient_clip_val=1.0) or bf16, or raise "
                f"model.non_finite.max_consecutive_steps."
            )

    def _forget_step_values(self, *names: str) -> None:
        """Keep Lightning from logging these metrics' previous values again at this (skipped) step.

        Lightning re-sends every step metric's last value at each step until the epoch ends, and the
        training stream is one endless epoch: a skipped step would show the last finite loss. Resetting
        the result (Lightning 2.6's collection, the one place that holds it) leaves the step without one.
        """
        for result in self.trainer._results.values():
            if result.meta.name in names:
                result.reset()

    # ------------------------------------------------------------- validation
    def on_validation_start(self) -> None:
        self._apply_recipe_schedule()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # A fixed generator per batch: the held-out loss is deterministic and comparable across steps.
        # Every rank holds the whole validation batch, so its draws are not split by rank.
        # Encode once; each held-out loss then replays the same draws from the same generator state.
        torch.manual_seed(self.seed + batch_idx)
        generator = torch.Generator().manual_seed(self.seed + batch_idx)
        random = BatchRandom(generator)
        inputs = self._encode_inputs(batch, random)
        after_encoding = generator.get_state()

        def held_out_loss(t_fraction: float | None) -> torch.Tensor:
            torch.manual_seed(self.seed + batch_idx)
            generator.set_state(after_encoding)
            return self._denoising_loss(inputs, random, t_fraction)["loss"]

        batch_size = batch["video"].shape[0]
        self.log("val/loss", held_out_loss(None), prog_bar=True, batch_size=batch_size, sync_dist=True)
        # The loss at fixed points of the schedule, same noise each time: a cheap, deterministic signal
        # that separates "learns coarse structure" (high t) from "learns detail" (low t).
        for quantile in self.validation["loss_quantiles"]:
            loss_t = held_out_loss(quantile)
            self.log(f"val/loss_t{quantile:.1f}", loss_t, batch_size=batch_size, sync_dist=True)
        if batch_idx == 0 and self.validation["sample"] and self.trainer.is_global_zero:
            self._log_validation_sample(batch)

    @torch.no_grad()
    def generate(
        self,
        batch: Mapping[str, Any],
        num_frames: int,
        height: int,
        width: int,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        seed: int = 0,
        progress: bool = False,
        noise_prior: Mapping[str, Any] | str | None = None,
        init_video: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Videos ``[B, num_frames, 3, height, width]`` in [-1, 1] for the batch's references and captions.

        ``noise_prior``: ``{name: <registered noise prior>, ...options}`` for the initial noise (default gaussian).
        ``init_video`` (``[B, num_frames, 3, height, width]`` in [-1, 1]): re-denoise it partially instead
        (SDEdit): encoded, noised to ``strength`` in [0, 1] of the schedule, denoised with the same
        prompt and conditions; ``strength=0`` returns it through the VAE round trip.
        """
        shape = self.backbone.latent_shape(len(batch["caption"]), num_frames, height, width)  # refuses bad sizes
        start_latents = None
        if init_video is not None:
            if tuple(init_video.shape) != (shape[0], num_frames, 3, height, width):
                raise ValueError(
                    f"init_video is {tuple(init_video.shape)}; generate was asked for "
                    f"{(shape[0], num_frames, 3, height, width)} (batch, frames, 3, height, width)."
                )
            # A VAE's weights, or a codec's statistics (a weight-free codec has buffers only).
            vae_dtype = next(itertools.chain(self.backbone.vae.parameters(), self.backbone.vae.buffers())).dtype
            start_latents = self.backbone.encode_video(init_video.to(self.device, vae_dtype))  # the posterior mean
        check_sampling_inputs(self.conditioners, batch)
        generator = torch.Generator().manual_seed(seed)
        conditions = self.conditions_for(batch, BatchRandom(generator))
        text = self.backbone.encode_text(list(batch["caption"]))
        negative = self.backbone.encode_text([""] * len(batch["caption"]))
        latents = sample_latents(
            self.backbone,
            self.plan,
            conditions,
            text,
            negative,
            shape,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            progress=progress,
            noise_prior=build_noise_prior(noise_prior),
            start_latents=start_latents,
            strength=strength,
        )
        return self.backbone.decode_latents(latents)

    def _log_validation_sample(self, batch: Mapping[str, Any]) -> None:
        _, frames, _, height, width = batch["video"].shape
        video = self.generate(
            batch,
            frames,
            height,
            width,
            self.validation["num_inference_steps"],
            self.validation["guidance_scale"],
            seed=self.seed,
            noise_prior=self.validation["noise_prior"],
        ).cpu()
        out_dir = Path(self.trainer.default_root_dir) / "samples"
        log_generated_videos(self.loggers, video, batch, self.global_step, out_dir, self.validation["frequency"])
        # Sampling at video scale holds activations of every denoising step's graph-free passes;
        # free them before training resumes.
        del video
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_config is None:
            optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=1e-4)
        else:
            optimizer = hydra.utils.instantiate(self.optimizer_config)(params=self.trainable_parameters())
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise ValueError(
                "trainer.max_steps must be set (training streams data without epochs); e.g. trainer.max_steps=1800."
            )
        config = dict(self.lr_scheduler_config)
        scheduler = get_scheduler(
            config.pop("name"),
            optimizer,
            num_warmup_steps=config.pop("warmup_steps", 0),
            num_training_steps=max_steps,
            **config,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["IdentityVideoModule"]
