"""CLIP and DINO metrics: CLIPScore (ConsisID), CLIP-I, CLIP-T, DINO and temporal smoothness (Magic-Me).

Models are transformers folders on local disk (``save_pretrained`` layout: ``config.json``, the
weights, ``preprocessor_config.json``, and for CLIP the tokenizer files). Frames are RGB uint8.

* CLIPScore: ``100 * cos(text, frame)`` averaged over frames (not clamped; ``evaluate`` uses the same 16
  evenly sampled frames as the identity metrics, where the official script takes ``i * T // 16``). ConsisID's official
  script handed OpenCV's BGR frames to the CLIP processor; ``bgr_compat=True`` reproduces that
  mistake for comparison with published numbers, and is off by default.
* CLIP-T: the same cosine without the factor 100 (Magic-Me's text alignment).
* CLIP-I / DINO: cosine between the reference photo's and each frame's image embedding, averaged.
* Temporal smoothness: mean cosine between the embeddings of consecutive frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def require_model_folder(path: str | Path, what: str, setting: str, files: str) -> Path:
    """The folder, or a FileNotFoundError naming the exact path, the files expected and the setting to change."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} not found: {path / 'config.json'} does not exist; put a transformers {what} folder "
            f"({files}) at {path} or set {setting}=/path/to/folder"
        )
    return path


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class ClipEmbedder:
    """A transformers CLIPModel from a local folder: normalised image and text embeddings."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        path = require_model_folder(
            path, "CLIP model", "models.clip", "config.json, weights, preprocessor_config.json, tokenizer files"
        )
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(device)
        self.processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``[N, D]`` L2-normalised embeddings of RGB uint8 images."""

        def embed(pixels: torch.Tensor) -> torch.Tensor:
            return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

        return _embed_in_batches(images, self.processor, embed, self.device, self.batch_size)

    @torch.no_grad()
    def text(self, text: str) -> torch.Tensor:
        """``[D]`` L2-normalised embedding of a prompt (truncated to the model's length)."""
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        ).pooler_output
        return _normalise(self.model.text_projection(pooled))[0].float().cpu()


class DinoEmbedder:
    """A transformers DINO / DINOv2 (any ViT-style AutoModel) from a local folder: normalised CLS embeddings."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoImageProcessor, AutoModel

        path = require_model_folder(path, "DINO model", "models.dino", "config.json, weights, preprocessor_config.json")
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        def embed(pixels: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixels).last_hidden_state[:, 0]  # CLS after the final norm: DINO's

        return _embed_in_batches(images, self.processor, embed, self.device, self.batch_size)


def _embed_in_batches(images: Sequence[np.ndarray], processor, embed, device: str, batch_size: int) -> torch.Tensor:
    """``[N, D]`` L2-normalised ``embed(pixels)`` of RGB uint8 images, `batch_size` images at a time."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = [np.ascontiguousarray(image) for image in images[start : start + batch_size]]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        out.append(_normalise(embed(pixels)).float().cpu())
    return torch.cat(out)


def clip_score(clip: ClipEmbedder, frames: Sequence[np.ndarray], prompt: str, bgr_compat: bool = False) -> float:
    """``100 * cos(text, frame)`` averaged over frames; ``bgr_compat`` swaps channels as the official script did."""
    if bgr_compat:
        frames = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames]
    return float(100.0 * (clip.images(frames) @ clip.text(prompt)).mean())


def mean_cosine_to(anchor: torch.Tensor, embeddings: torch.Tensor) -> float:
    """Mean cosine between one normalised embedding and each row of ``embeddings``."""
    return float((embeddings @ anchor).mean())


def temporal_smoothness(embeddings: torch.Tensor) -> float:
    """Mean cosine between consecutive rows (frames); NaN for a single frame."""
    if len(embeddings) < 2:
        return float("nan")
    return float((embeddings[1:] * embeddings[:-1]).sum(-1).mean())
