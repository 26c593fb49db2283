"""Magic-Me's prompt-to-segmentation masked loss: the diffusion loss only where the subject is.

Video Custom Diffusion segments the subject named in the prompt (e.g. "person") in every training
frame and masks the loss with it, so the ID tokens learn the person and not the background.
``magicme.subject_mask_loss`` is that recipe step. Its mask comes from, in this order:

* ``segmenter``: a local folder of transformers' text-prompted ``CLIPSegForImageSegmentation`` with
  its tokenizer (e.g. a copy of CIDAS/clipseg-rd64-refined), prompted with ``prompt``;
* offline fallbacks (``segmenter: null``), by ``fallback``:
  ``head`` (default): the face backend's landmark hull grown ``head_scale`` times to the head, from the
  batch's face points (``idvid_magicme.head_masks.HeadMasks``);
  ``parser``: facexlib's BiSeNet face parser (``parser_weights``), its face and hair classes;
  ``face_mask``: the face masks preprocessing stored with the clips (the face alone).

The run log says which one is used, and every batch records it as ``subject_mask_source``. The mask
is resized trilinearly to the latent grid, as ConsisID's dynamic mask loss does; a sample whose mask
is empty keeps the full-frame loss.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from idvid.errors import ConfigError, MissingFileError
from idvid.randomness import BatchRandom
from idvid.registry import register_recipe_step
from idvid.training.recipe import RecipeStep
from idvid_magicme.head_masks import HeadMasks, ParsedHeadMasks

log = logging.getLogger(__name__)

FALLBACKS = ("head", "parser", "face_mask")

# CLIPSeg's image preprocessing (its preprocessor_config.json), used when the folder has none.
CLIPSEG_IMAGE_SIZE = 352
CLIPSEG_MEAN = (0.485, 0.456, 0.406)
CLIPSEG_STD = (0.229, 0.224, 0.225)


class ClipSegSegmenter:
    """Text-prompted segmentation of video frames with a local CLIPSeg folder (frozen, no_grad)."""

    def __init__(self, folder: str | Path, prompt: str, threshold: float = 0.5):
        from transformers import AutoTokenizer, CLIPSegForImageSegmentation

        self.folder = Path(folder).expanduser()
        if not (self.folder / "config.json").is_file():
            raise MissingFileError(
                f"CLIPSeg folder not found or incomplete: {self.folder} (no config.json).",
                "Give recipe.<label>.segmenter=FOLDER, a local save_pretrained copy of a transformers "
                "CLIPSegForImageSegmentation with its tokenizer (e.g. CIDAS/clipseg-rd64-refined, downloaded on a "
                "machine with internet), or segmenter=null to use the batch's face masks.",
            )
        self.model = CLIPSegForImageSegmentation.from_pretrained(self.folder).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.prompt, self.threshold = prompt, threshold
        settings = {}
        if (self.folder / "preprocessor_config.json").is_file():
            settings = json.loads((self.folder / "preprocessor_config.json").read_text())
        size = settings.get("size", CLIPSEG_IMAGE_SIZE)
        self.size = int(size.get("height", CLIPSEG_IMAGE_SIZE) if isinstance(size, dict) else size)
        self.mean = torch.tensor(settings.get("image_mean", CLIPSEG_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(settings.get("image_std", CLIPSEG_STD)).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, H, W]`` in [-1, 1] -> binary subject masks ``[B, F, 1, H, W]``."""
        batch, frames, _, height, width = video.shape
        device = next(self.model.parameters()).device
        images = video.flatten(0, 1).float().to(device).add(1).div(2)
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        pixels = (images - self.mean.to(device)) / self.std.to(device)
        text = self.tokenizer([self.prompt] * pixels.shape[0], padding=True, return_tensors="pt").to(device)
        logits = self.model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels).logits
        logits = logits.view(pixels.shape[0], 1, *logits.shape[-2:])
        probability = F.interpolate(logits.sigmoid(), size=(height, width), mode="bilinear", align_corners=False)
        masks = (probability > self.threshold).float()
        return masks.view(batch, frames, 1, height, width).to(video.device)


@register_recipe_step("magicme.subject_mask_loss")
class SubjectMaskLoss(RecipeStep):
    """The loss only inside the subject's mask: CLIPSeg prompted with ``prompt``, else an offline ``fallback``."""

    def __init__(
        self,
        segmenter: str | None = None,
        prompt: str = "person",
        threshold: float = 0.5,
        fallback: str = "head",
        head_scale: float = 1.5,
        parser_weights: str | None = None,
        parser_width: int = 64,
    ):
        if not 0.0 < threshold < 1.0:
            raise ConfigError(
                f"recipe step magicme.subject_mask_loss: threshold={threshold} is not in (0, 1).",
                "It is the segmenter's probability above which a pixel belongs to the subject (e.g. 0.5).",
            )
        if fallback not in FALLBACKS:
            raise ConfigError(
                f"recipe step magicme.subject_mask_loss: fallback={fallback!r} is not one of {FALLBACKS}.",
                "head: landmark hull grown to the head; parser: BiSeNet (parser_weights); face_mask: the clips' masks.",
            )
        self.segmenter: Any = None
        if segmenter:
            self.segmenter = ClipSegSegmenter(segmenter, prompt, threshold)
            self.source = f"clipseg:{prompt}"
            log.info("subject mask loss: CLIPSeg from %s, prompted with %r", segmenter, prompt)
            return
        if fallback == "head":
            self.segmenter = HeadMasks(head_scale)
            self.source = self.segmenter.source
            log.info("subject mask loss: no segmenter given, using the head mask (landmark hull grown %gx)", head_scale)
        elif fallback == "parser":
            self.segmenter = ParsedHeadMasks(parser_weights, parser_width)
            self.source = self.segmenter.source
            log.info("subject mask loss: no segmenter given, using the BiSeNet face parser (%s)", parser_weights)
        else:
            self.source = "face_mask"
            log.info("subject mask loss: no segmenter given, using the batch's face masks (face_mask)")

    def on_batch(self, batch: dict[str, Any], random: BatchRandom) -> dict[str, Any]:
        if isinstance(self.segmenter, ClipSegSegmenter):
            batch["subject_mask"] = self.segmenter(batch["video"])
        elif self.segmenter is not None:
            batch["subject_mask"] = self.segmenter(batch)
        elif "face_mask" in batch:
            batch["subject_mask"] = batch["face_mask"].float()
        else:
            raise ConfigError(
                "recipe step magicme.subject_mask_loss has fallback=face_mask and the batch carries no face_mask.",
                "Give recipe.<label>.segmenter=CLIPSEG_FOLDER, fallback=head, or train on a data set whose manifest "
                "has face masks (python -m idvid preprocess writes them).",
            )
        batch["subject_mask_source"] = self.source
        return batch

    def on_loss_mask(self, mask: torch.Tensor, batch: Mapping[str, Any], random: BatchRandom) -> torch.Tensor:
        subject = batch.get("subject_mask")
        if subject is None:  # sampling-time or a batch the step did not see
            return mask
        _, frames, _, height, width = mask.shape
        resized = F.interpolate(
            subject.float().permute(0, 2, 1, 3, 4), size=(frames, height, width), mode="trilinear", align_corners=False
        ).permute(0, 2, 1, 3, 4)
        has_subject = resized.flatten(1).sum(1) > 0
        mask = mask.to(resized)
        return torch.where(has_subject.view(-1, 1, 1, 1, 1), mask * resized, mask)


__all__ = ["ClipSegSegmenter", "SubjectMaskLoss"]
