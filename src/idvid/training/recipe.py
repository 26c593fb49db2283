"""The training recipe: an ordered set of registered steps, each acting at named points of a step.

A recipe is the ``recipe:`` mapping of a config, ``label -> {name: <registered recipe step>, ...}``,
applied in the order it is written (like ``injectors:``; a mapping rather than a list so that one
step's knob can be overridden by its label, ``recipe.text_drop.probability=0``, and a step switched
off with ``recipe.text_drop=null``). The core's default recipe is empty; a method ships its own
(ConsisID's: ``plugins/consisid/idvid_consisid/conf/recipe/consisid.yaml``).

A step (``RecipeStep``) overrides only the hooks it needs. The LightningModule calls them, in
recipe order, at these points of a training (and held-out validation) step:

1. ``on_batch(batch, random)``: the batch before any conditioner sees it (choose the reference, noise it);
2. ``on_captions(captions, random)``: the captions before text encoding (text drop);
3. ``on_input_latents(latents, random)``: the ``input_concat`` channels ``[B, f, C, h, w]`` (dropout);
4. ``on_injector_state(injector, state, random)``: what an in-block injector's ``prepare`` returned
   (e.g. identity tokens to drop);
5. ``on_loss_mask(mask, batch, random)``: the per-element loss mask ``[B, f, 1, h, w]`` (all ones at first);
6. ``at_step(plan, global_step)``: a schedule, before each training batch and before validation
   (coarse-to-fine); returns values to log under ``train/``.

Every random draw goes through the step's ``BatchRandom`` (``idvid.randomness``): a resumed run draws
exactly what the uninterrupted run would have drawn, and a data-parallel run what one process with
the same global batch draws. A step draws whatever its probability (a coin of probability 0 is still
tossed), so changing one knob never shifts another step's draws.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build, register_recipe_step


class RecipeStep:
    """Base class of recipe steps: every hook passes its input through unchanged."""

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        return batch

    def on_captions(self, captions: list[str], random: BatchRandom) -> list[str]:
        return captions

    def on_input_latents(self, latents: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        return latents

    def on_injector_state(self, injector: Any, state: Any, random: BatchRandom) -> Any:
        return state

    def on_loss_mask(self, mask: torch.Tensor, batch: Mapping[str, Any], random: BatchRandom) -> torch.Tensor:
        return mask

    def at_step(self, plan: Any, global_step: int) -> dict[str, float]:
        return {}


def check_probability(step: str, name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"recipe step {step}: {name}={value} is not a probability.", "Use a value in [0, 1] (0 switches it off)."
        )
    return value


class Recipe:
    """The configured steps in recipe order; each hook runs every step's hook in turn."""

    def __init__(self, steps: Mapping[str, RecipeStep] | None = None):
        self.steps: dict[str, RecipeStep] = dict(steps or {})
        for label, step in self.steps.items():
            if not isinstance(step, RecipeStep):
                raise TypeError(
                    f"Recipe step {label!r} is a {type(step).__name__}; recipe steps must derive from "
                    f"idvid.training.recipe.RecipeStep."
                )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "Recipe":
        steps = {}
        for label, node in (config or {}).items():
            if node is None:  # an experiment may switch a step off with `label: null`
                continue
            if not isinstance(node, Mapping) or "name" not in node:
                raise ConfigError(
                    f"recipe.{label}={node!r} is not a recipe step node.",
                    "The recipe is label -> {name: <registered recipe step>, ...options} (`python -m idvid "
                    "plugins` lists the steps; `fit ... --cfg job` prints the recipe's labels): change a step's "
                    "option with recipe.<label>.<option>=..., switch a step off with recipe.<label>=null.",
                )
            node = dict(node)
            steps[label] = build(PluginKind.RECIPE_STEP, node.pop("name"), **node)
        return cls(steps)

    def __iter__(self) -> Iterator[RecipeStep]:
        return iter(self.steps.values())

    def __len__(self) -> int:
        return len(self.steps)

    def on_batch(self, batch: Mapping[str, Any], random: BatchRandom) -> dict[str, Any]:
        batch = dict(batch)
        for step in self:
            batch = step.on_batch(batch, random)
        return batch

    def on_captions(self, captions: Sequence[str], random: BatchRandom) -> list[str]:
        captions = list(captions)
        for step in self:
            captions = step.on_captions(captions, random)
        return captions

    def on_input_latents(self, latents: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        for step in self:
            latents = step.on_input_latents(latents, random)
        return latents

    def on_injector_state(self, injector: Any, state: Any, random: BatchRandom) -> Any:
        for step in self:
            state = step.on_injector_state(injector, state, random)
        return state

    def loss_mask(self, batch: Mapping[str, Any], latent_shape: torch.Size, random: BatchRandom) -> torch.Tensor:
        """``[B, f, 1, h, w]``: all ones, then each step's ``on_loss_mask`` in turn."""
        batch_size, frames, _, height, width = latent_shape
        mask = torch.ones(batch_size, frames, 1, height, width)
        for step in self:
            mask = step.on_loss_mask(mask, batch, random)
        return mask

    def at_step(self, plan: Any, global_step: int) -> dict[str, float]:
        values: dict[str, float] = {}
        for step in self:
            values.update(step.at_step(plan, global_step))
        return values


# ----------------------------------------------------------------- the core's generic steps
@register_recipe_step("text_drop")
class TextDrop(RecipeStep):
    """Replace a sample's caption by "" with ``probability`` (trains the unconditional branch of CFG)."""

    def __init__(self, probability: float = 0.1):
        self.probability = check_probability("text_drop", "probability", probability)

    def on_captions(self, captions: list[str], random: BatchRandom) -> list[str]:
        drop = random.coin(self.probability, len(captions))
        return ["" if d else c for c, d in zip(captions, drop.tolist())]


@register_recipe_step("image_latent_dropout")
class ImageLatentDropout(RecipeStep):
    """Zero every ``input_concat`` channel of a sample with ``probability`` (ConsisID's Dropout, 0.05)."""

    def __init__(self, probability: float = 0.05):
        self.probability = check_probability("image_latent_dropout", "probability", probability)

    def on_input_latents(self, latents: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        drop = random.coin(self.probability, latents.shape[0])
        keep = (~drop).to(latents).view(-1, 1, 1, 1, 1)
        return latents * keep


@register_recipe_step("cross_reference")
class CrossReference(RecipeStep):
    """With ``probability`` per sample, swap every ``ref_*`` for its ``cross_ref_*`` twin (where the clip has one).

    The reference then comes from a frame outside the training window (same identity), so the model
    cannot copy the reference's pose and lighting into the video (ConsisID's dynamic cross-face,
    Concat-ID's cross-video pairing as far as the data offers it). Records the choice as
    ``used_cross_ref`` ``[B]`` in the batch.
    """

    step_name = "cross_reference"

    def __init__(self, probability: float = 0.5):
        self.probability = check_probability(self.step_name, "probability", probability)

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        use_cross = random.coin(self.probability, batch["ref_image"].shape[0])
        if "has_cross_ref" in batch:
            use_cross &= batch["has_cross_ref"].bool().cpu()
        # Every reference key (image, drawing, embedding, points, frame) switches together with its cross_ twin.
        for cross_key in [key for key in batch if key.startswith("cross_ref_")]:
            key = cross_key.removeprefix("cross_")
            if key in batch:
                choose = use_cross.to(batch[key].device).view(-1, *([1] * (batch[key].dim() - 1)))
                batch[key] = torch.where(choose, batch[cross_key], batch[key])
        batch["used_cross_ref"] = use_cross
        return batch


__all__ = ["CrossReference", "Recipe", "RecipeStep", "ImageLatentDropout", "TextDrop", "check_probability"]
