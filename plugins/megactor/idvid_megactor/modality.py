"""``megactor.modality_control``: MegActor-Sigma's modality-decoupled control, as a recipe step.

Per sample, a modality is drawn with configurable shares (the paper's stage 2: visual 10 %, audio
20 %, mixed 70 %):

* **visual**: the driving frames keep only the drawn face regions (eyes, mouth, or both: face-drop),
  the audio is dropped (``has_audio`` False and a zero mel, so ``megactor.whisper_audio`` gives zero tokens);
* **audio**: the driving frames are zeroed (no visual signal), the audio is kept;
* **mixed**: the visual signal drives only the eyes, the audio drives the mouth.

The kept driving frames go to ``drive_video`` (read by ``megactor.driving_frames``); ``drive_region_mask``
``[B, F, 1, H, W]`` marks the regions some signal drives (the visual regions kept, plus the mouth when the
audio drives it). With ``region_loss_probability`` per sample the loss covers only those regions (else the
whole frame): the loss mask follows the chosen regions.

**The mouth-token attention mask** (``mouth_attention_mask``, on by default): when the driving frames show
no mouth (visual with face-drop to the eyes, and mixed, where the audio drives the mouth), the mouth-region
video tokens do not attend to the driving region in the blocks' self-attention: the paper's
``softmax`` over the complement of the driving region for the mouth's queries; every other query attends as
usual. The step writes it as the core's attention exclusion (``idvid.injection.attention_exclusion``):
``attention_exclusion_queries`` = the mouth's box mask, ``attention_exclusion_keys`` = the kept driving
regions (the eyes), per sample (all zeros where the video drives the mouth, or nothing: audio only).

Every draw goes through the step's ``BatchRandom``, made whatever the shares, so resume stays exact (the
attention mask draws nothing).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from idvid.errors import ConfigError
from idvid.injection.attention_exclusion import KEYS_KEY, QUERIES_KEY
from idvid.randomness import BatchRandom
from idvid.registry import register_recipe_step
from idvid.training.recipe import RecipeStep, check_probability
from idvid_megactor.face_regions import box_masks, region_boxes

MODALITIES = ("visual", "audio", "mixed")
REGIONS = ("eyes", "mouth", "both")


@register_recipe_step("megactor.modality_control")
class ModalityControl(RecipeStep):
    def __init__(
        self,
        shares: Mapping[str, float] | None = None,
        regions: Sequence[str] = REGIONS,
        region_loss_probability: float = 0.5,
        box_margin: float = 0.2,
        mouth_attention_mask: bool = True,
    ):
        shares = dict(shares if shares is not None else {"visual": 0.1, "audio": 0.2, "mixed": 0.7})
        unknown = set(shares) - set(MODALITIES)
        values = [float(shares.get(name, 0.0)) for name in MODALITIES]
        if unknown or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ConfigError(
                f"recipe step megactor.modality_control: shares={shares} are not shares of {MODALITIES}.",
                "Give each of visual, audio, mixed a share >= 0, summing to 1 (MegActor-Sigma's stage 2: "
                "{visual: 0.1, audio: 0.2, mixed: 0.7}; stage 1: {visual: 1.0}).",
            )
        bad = [r for r in regions if r not in REGIONS]
        if bad or not regions:
            raise ConfigError(
                f"recipe step megactor.modality_control: regions={list(regions)}.",
                f"Choose face-drop regions among {list(REGIONS)} (at least one).",
            )
        if box_margin < 0:
            raise ConfigError(
                f"recipe step megactor.modality_control: box_margin={box_margin} is negative.",
                "Use 0 or more: how much each landmark box grows on every side, as a fraction of its size.",
            )
        self.shares = dict(zip(MODALITIES, values))
        self.regions = list(regions)
        self.region_loss_probability = check_probability(
            "megactor.modality_control", "region_loss_probability", region_loss_probability
        )
        self.box_margin = float(box_margin)
        self.mouth_attention_mask = bool(mouth_attention_mask)

    def draw(self, random: BatchRandom, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(modality, region)`` per sample: indices into ``MODALITIES`` and into ``self.regions``."""
        draw = random.rand(batch_size)
        bounds = torch.tensor([self.shares["visual"], self.shares["visual"] + self.shares["audio"]])
        modality = torch.bucketize(draw, bounds, right=True).clamp(max=len(MODALITIES) - 1)
        return modality, random.randint(len(self.regions), batch_size)

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        video = batch["video"]
        batch_size, _, _, height, width = video.shape
        modality, region = self.draw(random, batch_size)
        chosen = [self.regions[i] for i in region.tolist()]
        visual, mixed = modality == 0, modality == 2  # audio-only (1) keeps no visual region
        eyes_seen = (visual & torch.tensor([r in ("eyes", "both") for r in chosen])) | mixed
        mouth_seen = visual & torch.tensor([r in ("mouth", "both") for r in chosen])
        audio_on = ~visual

        eye_boxes, mouth_boxes = region_boxes(batch)
        eyes = box_masks(eye_boxes.to(video.device), height, width, self.box_margin)
        mouth = box_masks(mouth_boxes.to(video.device), height, width, self.box_margin)

        def per_sample(flags: torch.Tensor) -> torch.Tensor:
            return flags.to(video.device).view(-1, 1, 1, 1, 1).to(video.dtype)

        keep = torch.maximum(eyes * per_sample(eyes_seen), mouth * per_sample(mouth_seen))
        batch["drive_video"] = video * keep  # 0 (mid-grey) wherever the visual signal is dropped
        batch["drive_region_mask"] = torch.maximum(keep, mouth * per_sample(audio_on))
        batch["drive_modality"] = modality
        if self.mouth_attention_mask:  # the driving frames show the eyes, not the mouth: mouth tokens do not read them
            eyes_only = per_sample(eyes_seen & ~mouth_seen)
            batch[QUERIES_KEY] = mouth * eyes_only
            batch[KEYS_KEY] = keep * eyes_only
        if "has_audio" in batch:  # visual-only samples drop the audio
            batch["has_audio"] = batch["has_audio"].bool() & audio_on.to(batch["has_audio"].device)
            mel = batch["audio_mel"]
            batch["audio_mel"] = mel * audio_on.to(mel.device).view(-1, 1, 1).to(mel.dtype)
        return batch

    def on_loss_mask(self, mask: torch.Tensor, batch: Mapping[str, Any], random: BatchRandom) -> torch.Tensor:
        batch_size, frames, _, height, width = mask.shape
        use_regions = random.coin(self.region_loss_probability, batch_size)
        regions = batch.get("drive_region_mask")
        if regions is None:
            return mask
        # [B, F, 1, H, W] pixels -> [B, f, 1, h, w] latent cells: a cell counts when any of its pixels is driven
        latent = torch.nn.functional.adaptive_max_pool3d(regions.permute(0, 2, 1, 3, 4), (frames, height, width))
        latent = latent.permute(0, 2, 1, 3, 4)
        use_regions &= latent.flatten(1).sum(1).cpu() > 0  # no face found: the whole frame
        mask = mask.to(latent)
        return torch.where(use_regions.view(-1, 1, 1, 1, 1).to(latent.device), mask * latent, mask)
