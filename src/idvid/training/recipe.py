"""The identity-preserving training recipe (ConsisID's, with every knob in config).

Each knob is a probability or a distribution applied per sample, drawn through the
step's ``BatchRandom``: a resumed run draws exactly what the uninterrupted run would
have drawn, and a data-parallel run what a single process would have drawn. Setting a
probability to 0 switches the knob off.

* ``cross_face_probability`` (beta): take the reference from a frame *outside* the
  training clip (same identity) instead of inside it (dynamic cross-face loss).
* ``reference_noise_log_sigma``: Gaussian noise on the reference before VAE encoding,
  sigma = exp(N(mean, std)); ``null`` switches it off.
* ``mask_loss_probability`` (alpha): restrict the loss to the face mask (dynamic mask loss).
* ``image_latent_dropout``: zero every input_concat channel of a sample (Dropout).
* ``text_drop_probability``: replace the caption by "" (for classifier-free guidance).

DropToken acts on identity tokens and lives with the injector that owns them;
coarse-to-fine is the ``CoarseToFine`` callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from idvid.randomness import BatchRandom


@dataclass
class Recipe:
    cross_face_probability: float = 0.5
    reference_noise_log_sigma: Sequence[float] | None = (-3.0, 0.5)
    mask_loss_probability: float = 0.5
    image_latent_dropout: float = 0.05
    text_drop_probability: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "cross_face_probability",
            "mask_loss_probability",
            "image_latent_dropout",
            "text_drop_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"recipe.{name}={value} is not a probability; use a value in [0, 1].")
        if self.reference_noise_log_sigma is not None and len(self.reference_noise_log_sigma) != 2:
            raise ValueError(
                f"recipe.reference_noise_log_sigma={self.reference_noise_log_sigma} must be [mean, std] of "
                f"log(sigma) (ConsisID: [-3, 0.5]) or null to switch the noise off."
            )

    def choose_reference(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        """Pick in-clip or cross-face reference per sample and add the reference noise."""
        batch = dict(batch)
        batch_size = batch["ref_image"].shape[0]
        use_cross = random.coin(self.cross_face_probability, batch_size)
        if "has_cross_ref" in batch:
            use_cross &= batch["has_cross_ref"].bool().cpu()
        # Every reference key (image, drawing, embedding, points, frame) switches together with its cross_ twin.
        for cross_key in [key for key in batch if key.startswith("cross_ref_")]:
            key = cross_key.removeprefix("cross_")
            if key in batch:
                choose = use_cross.to(batch[key].device).view(-1, *([1] * (batch[key].dim() - 1)))
                batch[key] = torch.where(choose, batch[cross_key], batch[key])
        batch["used_cross_ref"] = use_cross

        log_sigma = random.randn(batch_size)
        noise = random.randn(*batch["ref_image"].shape)
        if self.reference_noise_log_sigma is not None:
            mean, std = self.reference_noise_log_sigma
            sigma = torch.exp(mean + std * log_sigma).view(-1, 1, 1, 1)
            batch["ref_image_noisy"] = batch["ref_image"] + (sigma * noise).to(batch["ref_image"])
        return batch

    def drop_text(self, captions: Sequence[str], random: BatchRandom) -> list[str]:
        drop = random.coin(self.text_drop_probability, len(captions))
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    def drop_image_latents(self, extra_latents: torch.Tensor, random: BatchRandom) -> torch.Tensor:
        drop = random.coin(self.image_latent_dropout, extra_latents.shape[0])
        keep = (~drop).to(extra_latents).view(-1, 1, 1, 1, 1)
        return extra_latents * keep

    def loss_mask(self, face_mask: torch.Tensor | None, latent_shape: torch.Size, random: BatchRandom) -> torch.Tensor:
        """Per-sample loss mask ``[B, f, 1, h, w]``: the face mask with probability alpha, else all ones.

        ``face_mask`` is ``[B, F, 1, H, W]`` at video resolution; it is trilinearly resized to the latent grid.
        """
        batch_size, frames, _, height, width = latent_shape
        use_face = random.coin(self.mask_loss_probability, batch_size)
        ones = torch.ones(batch_size, frames, 1, height, width)
        if face_mask is None:
            return ones
        resized = torch.nn.functional.interpolate(
            face_mask.float().permute(0, 2, 1, 3, 4),
            size=(frames, height, width),
            mode="trilinear",
            align_corners=False,
        ).permute(0, 2, 1, 3, 4)
        # A sample whose mask is empty (no face found) keeps the full-frame loss.
        use_face &= resized.flatten(1).sum(1).cpu() > 0
        return torch.where(use_face.view(-1, 1, 1, 1, 1).to(resized.device), resized, ones.to(resized))
