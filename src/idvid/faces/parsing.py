"""Face parsing with BiSeNet (facexlib's `parsing_bisenet.pth`, 19 CelebAMask-HQ classes) -> face masks.

The network is written here so that its state-dict keys and shapes are those of the released
weights (loaded with strict=True); nothing is downloaded. The face is aligned to a 512 x 512 crop by
the 5-point similarity of `idvid.faces.align_face`, parsed, and the kept classes are warped back to
the frame by the inverse transform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from idvid.faces.align import align_face
from idvid.faces.types import Face, check_rgb_uint8

# CelebAMask-HQ label order of the released model.
PARSING_CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
# The face region a reference keeps: everything but background, ears, earrings, neck, necklace, cloth and hat
# (hair included), as ConsisID whitens its references (models/consisid_utils.py, bg_label).
FACE_AND_HAIR_CLASSES = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 17)
WEIGHTS_FILE = "parsing_bisenet.pth"
WEIGHTS_SOURCE = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Sequential):
    """Bias-free convolution, batch norm, ReLU (keys: conv.*, bn.*)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class ResidualBlock(nn.Module):
    """ResNet basic block; a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + branch)


class ResNet18Trunk(nn.Module):
    """ResNet-18 without pooling head; returns the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [width, width, 2 * width, 4 * width, 8 * width]
        for index in range(1, 5):
            stride = 1 if index == 1 else 2
            blocks = [
                ResidualBlock(widths[index - 1], widths[index], stride),
                ResidualBlock(widths[index], widths[index]),
            ]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    """3x3 conv, then channel attention from its global average (a sigmoid gate)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * gate


class ContextPath(nn.Module):
    """Trunk plus attention-refined 1/32 and 1/16 features, upsampled to 1/8 and 1/16."""

    def __init__(self, width: int = 64):
        super().__init__()
        context = 2 * width
        self.resnet = ResNet18Trunk(width)
        self.arm16 = AttentionRefinement(4 * width, context)
        self.arm32 = AttentionRefinement(8 * width, context)
        self.conv_head32 = ConvBNReLU(context, context)
        self.conv_head16 = ConvBNReLU(context, context)
        self.conv_avg = ConvBNReLU(8 * width, context, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(feat32) + global_context, feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    """Concatenate spatial and context features, 1x1 conv, add a channel-attention-weighted copy."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat + feat * gate


class SegmentationHead(nn.Module):
    """3x3 ConvBNReLU then a 1x1 classifier."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet face parser in facexlib's layout (ResNet-18 context path; its 1/8 features stand in for the
    spatial path). Defaults are the released model: width 64, 19 classes, ~13.3 M parameters.

    forward(x [B, 3, H, W], ImageNet-normalised RGB) -> class logits [B, num_classes, H, W]. The two
    auxiliary heads (conv_out16 / conv_out32) only served training; they exist so the released state
    dict loads strictly, and inference does not run them.
    """

    def __init__(self, num_classes: int = len(PARSING_CLASSES), width: int = 64):
        super().__init__()
        self.cp = ContextPath(width)
        self.ffm = FeatureFusion(4 * width, 4 * width)
        self.conv_out = SegmentationHead(4 * width, 4 * width, num_classes)
        self.conv_out16 = SegmentationHead(2 * width, width, num_classes)
        self.conv_out32 = SegmentationHead(2 * width, width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


class FaceParser:
    """Face masks from facexlib's BiSeNet parser.

    weights_path: facexlib's released `parsing_bisenet.pth`, copied to this machine (never downloaded).
    face_classes: the class ids (see PARSING_CLASSES) the mask keeps; default ConsisID's.
    network: the architecture to load the weights into (default `BiSeNet()`, the released size).
    """

    def __init__(
        self,
        weights_path: str | Path,
        device: str = "cpu",
        face_classes: Sequence[int] = FACE_AND_HAIR_CLASSES,
        input_size: int = 512,
        network: nn.Module | None = None,
    ):
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"face-parsing weights not found: {path}; put facexlib's {WEIGHTS_FILE} there "
                f"(released at {WEIGHTS_SOURCE}; copy it over, nothing is downloaded) "
                "or set mask.parser_weights=null for the landmark-hull mask"
            )
        network = network if network is not None else BiSeNet()
        num_classes = network.conv_out.conv_out.out_channels
        bad = [c for c in face_classes if not 0 <= int(c) < num_classes]
        if not face_classes or bad:
            raise ValueError(
                f"face_classes must be non-empty class ids in [0, {num_classes}), got {list(face_classes)}; "
                f"classes: {dict(enumerate(PARSING_CLASSES))}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} is not facexlib's {WEIGHTS_FILE} (BiSeNet, 19 classes): {err}") from err
        self.network = network.eval().to(device)
        self.device = torch.device(device)
        self.face_classes = tuple(int(c) for c in face_classes)
        self.input_size = int(input_size)
        self.weights_path = path

    @torch.no_grad()
    def parse_aligned(self, crop: np.ndarray) -> np.ndarray:
        """Class map [S, S] int64 of an aligned RGB uint8 face crop [S, S, 3]."""
        image = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)
        logits = self.network(((image - mean) / std)[None])
        return logits.argmax(dim=1)[0].cpu().numpy()

    def parse_mask(self, image_rgb_uint8: np.ndarray, face: Face) -> np.ndarray:
        """{0,1} uint8 mask [H, W] of `face` in the frame: the kept classes of its aligned crop, warped back."""
        image = check_rgb_uint8(image_rgb_uint8)
        crop, matrix = align_face(image, face.kps, self.input_size)
        kept = np.isin(self.parse_aligned(crop), self.face_classes).astype(np.uint8)
        height, width = image.shape[:2]
        # matrix maps frame -> crop; WARP_INVERSE_MAP samples each frame pixel at its crop position.
        return cv2.warpAffine(
            kept, matrix, (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0
        )
