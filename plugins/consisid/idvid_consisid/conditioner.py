"""``id_cond`` and ``id_vit_hidden`` from the reference face (the LFE's inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from idvid.backbones import BackboneInfo
from idvid.conditioning import Conditioner
from idvid.registry import register_conditioner

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@register_conditioner("consisid.identity_features")
class IdentityFeatures(Conditioner):
    """Identity features of the aligned reference face.

    * ``id_cond`` ``[B, D_face + D_clip]``: the face-recognition embedding (``ref_embedding``
      from the face backend: dlib 128-d offline, ArcFace 512-d with insightface) concatenated
      with the L2-normalised CLIP image embedding.
    * ``id_vit_hidden``: CLIP ViT hidden states after each layer in ``vit_layers``
      (ConsisID: 5 depths of a ViT-L/14-336, ``[B, 577, 1024]`` each).

    The CLIP tower loads from a local folder (``clip.pretrained``) or is built from
    ``clip.config`` (tiny random, demo scale).
    """

    produces = ("id_cond", "id_vit_hidden")
    deterministic_inputs = ("ref_image", "ref_embedding")  # no randomness: cacheable per reference
    reads = ("ref_image", "ref_embedding")

    def __init__(
        self,
        backbone: BackboneInfo,
        clip: Mapping[str, Any],
        vit_layers: Sequence[int] = (4, 8, 12, 16, 20),
    ):
        super().__init__(backbone)
        pretrained = clip.get("pretrained")
        self.pretrained = pretrained
        if pretrained:
            path = Path(pretrained).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"CLIP vision folder not found at {path}. Put a transformers CLIPVisionModelWithProjection "
                    f"(config.json + weights, e.g. a ViT-L/14-336 image encoder) there, or set "
                    f"conditioners.identity.clip.pretrained=null to build a tiny random one."
                )
            self.clip = CLIPVisionModelWithProjection.from_pretrained(path)
        else:
            self.clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip["config"]))
        self.clip.requires_grad_(False).eval()
        layers = self.clip.config.num_hidden_layers
        bad = [i for i in vit_layers if not 1 <= i <= layers]
        if bad:
            raise ValueError(
                f"vit_layers {bad} are out of range for a CLIP tower with {layers} layers (use 1..{layers})."
            )
        self.vit_layers = list(vit_layers)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "IdentityFeatures":
        super().train(mode)
        self.clip.eval()  # frozen feature extractor
        return self

    def forward(self, batch: Mapping[str, Any], backbone, random) -> dict[str, Any]:
        image = batch["ref_image"].float()
        size = self.clip.config.image_size
        pixels = torch.nn.functional.interpolate(
            (image + 1) / 2, size=(size, size), mode="bicubic", align_corners=False
        )
        pixels = (pixels.clamp(0, 1) - self.mean) / self.std
        output = self.clip(pixel_values=pixels, output_hidden_states=True)
        clip_embedding = output.image_embeds / output.image_embeds.norm(dim=-1, keepdim=True)
        face_embedding = batch["ref_embedding"].float().to(clip_embedding.device)
        return {
            "id_cond": torch.cat([face_embedding, clip_embedding], dim=-1),
            "id_vit_hidden": [output.hidden_states[i] for i in self.vit_layers],
        }
