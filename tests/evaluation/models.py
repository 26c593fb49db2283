"""Tiny random CLIP and DINOv2 folders in the save_pretrained layout, built offline for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, Dinov2Config, Dinov2Model

from idvid.backbones.demo_tokenizer import build_demo_tokenizer


def save_tiny_clip(path: Path) -> Path:
    tokenizer = build_demo_tokenizer(model_max_length=32)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_dino(path: Path) -> Path:
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
    )
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def save_tiny_syncnet(path: Path, seed: int = 0) -> Path:
    """A SyncNet of the public layout with narrow layers, random weights (BatchNorm statistics too), as a state dict."""
    from idvid.evaluation.syncnet import SyncNet

    torch.manual_seed(seed)
    model = SyncNet(audio_widths=(4, 6, 8, 6, 6, 8), lip_widths=(4, 6, 6, 6, 6, 8), embed_dim=12)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), path)
    return path


class TinyI3D(torch.nn.Module):
    """The call of StyleGAN-V's TorchScript I3D (videos [N, 3, T, H, W] in [-1, 1] -> features) on a tiny net."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(2, 4, 4))
        self.head = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        features = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
        return features if return_features else self.head(features)


def save_tiny_i3d(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def save_tiny_alexnet_features(path: Path, seed: int = 0) -> Path:
    """torchvision's AlexNet layout with random weights; only the convolutions (`features.*`, what LPIPS reads):
    the classifier is most of the real file's 233 MB."""
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    state = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return path
