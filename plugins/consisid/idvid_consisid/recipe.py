"""ConsisID's training recipe as idvid recipe steps (composed in ``conf/recipe/consisid.yaml``).

* ``consisid.cross_face_reference`` (beta): the reference from a frame *outside* the training clip
  (same identity) instead of inside it (dynamic cross-face loss).
* ``consisid.reference_noise``: Gaussian noise on the reference before VAE encoding,
  sigma = exp(N(mean, std)) (ConsisID: N(-3, 0.5)).
* ``consisid.dynamic_mask_loss`` (alpha): the loss restricted to the face mask.
* ``consisid.drop_token``: DropToken, identity tokens of ``consisid.local_face_cross_attention``
  dropped from the cross-attention keys.
* ``consisid.coarse_to_fine``: the in-block identity path bypassed until a step.

Image-latent dropout and text drop are the core's ``image_latent_dropout`` and ``text_drop``.
Every draw goes through the step's ``BatchRandom`` (see ``idvid.training.recipe``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from idvid.registry import register_recipe_step
from idvid.training.recipe import CrossReference, RecipeStep, check_probability
from idvid_consisid.injectors import LocalFaceCrossAttention


@register_recipe_step("consisid.cross_face_reference")
class CrossFaceReference(CrossReference):
    """ConsisID's dynamic cross-face (beta): the core's ``cross_reference`` step under ConsisID's name."""

    step_name = "consisid.cross_face_reference"


@register_recipe_step("consisid.reference_noise")
class ReferenceNoise(RecipeStep):
    """``ref_image_noisy`` = ``ref_image`` + sigma * N(0, 1), log(sigma) ~ N(mean, std) per sample.

    Only the VAE's copy is noisy (``reference_latents`` encodes ``ref_image_noisy`` when present);
    identity features see the clean reference.
    """

    def __init__(self, log_sigma: Sequence[float] = (-3.0, 0.5)):
        if log_sigma is None or len(log_sigma) != 2:
            raise ConfigError(
                f"recipe step consisid.reference_noise: log_sigma={log_sigma} is not [mean, std] of log(sigma).",
                "ConsisID uses [-3, 0.5]; to switch the noise off, remove the step (recipe.<label>=null).",
            )
        self.mean, self.std = (float(v) for v in log_sigma)

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        reference = batch["ref_image"]
        log_sigma = random.randn(reference.shape[0])
        noise = random.randn(*reference.shape)
        sigma = torch.exp(self.mean + self.std * log_sigma).view(-1, 1, 1, 1)
        batch["ref_image_noisy"] = reference + (sigma * noise).to(reference)
        return batch


@register_recipe_step("consisid.dynamic_mask_loss")
class DynamicMaskLoss(RecipeStep):
    """With ``probability`` per sample, the loss only inside the face mask, resized trilinearly to the latent.

    Reads ``face_mask`` ``[B, F, 1, H, W]`` (video resolution); a sample whose mask is empty (no face
    found) keeps the full-frame loss.
    """

    def __init__(self, probability: float = 0.5):
        self.probability = check_probability("consisid.dynamic_mask_loss", "probability", probability)

    def on_loss_mask(self, mask: torch.Tensor, batch: Mapping[str, Any], random: BatchRandom) -> torch.Tensor:
        batch_size, frames, _, height, width = mask.shape
        use_face = random.coin(self.probability, batch_size)
        face_mask = batch.get("face_mask")
        if face_mask is None:
            return mask
        resized = torch.nn.functional.interpolate(
            face_mask.float().permute(0, 2, 1, 3, 4),
            size=(frames, height, width),
            mode="trilinear",
            align_corners=False,
        ).permute(0, 2, 1, 3, 4)
        use_face &= resized.flatten(1).sum(1).cpu() > 0
        mask = mask.to(resized)
        return torch.where(use_face.view(-1, 1, 1, 1, 1).to(resized.device), mask * resized, mask)


@register_recipe_step("consisid.drop_token")
class DropToken(RecipeStep):
    """Drop each identity token of ``consisid.local_face_cross_attention`` from the keys with ``probability``.

    The same tokens for the whole (global) batch, at least one kept; only while the injector trains
    (validation's held-out loss sees every token).
    """

    def __init__(self, probability: float = 0.1):
        if not 0.0 <= probability < 1.0:
            raise ConfigError(
                f"recipe step consisid.drop_token: probability={probability} must be in [0, 1).",
                "1 would drop every identity token; ConsisID-style values are small (e.g. 0.1).",
            )
        self.probability = probability

    def on_injector_state(self, injector: Any, tokens: Any, random: BatchRandom) -> Any:
        if not isinstance(injector, LocalFaceCrossAttention) or not injector.training:
            return tokens
        draw = random.rand_shared(tokens.shape[1])
        keep = draw >= self.probability
        keep[draw.argmax()] = True  # at least one token stays
        return tokens[:, keep.to(tokens.device)]


@register_recipe_step("consisid.coarse_to_fine")
class CoarseToFine(RecipeStep):
    """Coarse-to-fine: learn the low-frequency (input) path first, then add the in-block path.

    Until ``in_block_start_step`` the plan's in-block injectors (pre_attn / attn_ffn / post_attn) are
    bypassed: they add nothing and get no gradient. The stage is derived from ``global_step``, so a
    resumed run is in the right stage; logged as ``train/in_block_enabled``.
    """

    def __init__(self, in_block_start_step: int = 0):
        if in_block_start_step < 0:
            raise ConfigError(
                f"recipe step consisid.coarse_to_fine: in_block_start_step={in_block_start_step} is negative.",
                "Use a step >= 0 (0 switches the coarse stage off).",
            )
        self.in_block_start_step = in_block_start_step

    def at_step(self, plan: Any, global_step: int) -> dict[str, float]:
        enabled = global_step >= self.in_block_start_step
        if plan.in_block_enabled != enabled:
            stage = "fine (in-block identity path on)" if enabled else "coarse (in-block identity path off)"
            print(f"[coarse-to-fine] step {global_step}: {stage}")
        plan.in_block_enabled = enabled
        return {"in_block_enabled": float(enabled)}
