"""Which video frames each latent (or token) frame of the backbone covers.

Per-frame signals (audio windows, driving frames) come per *video* frame; the backbone works on
*latent* frames: a video VAE with temporal compression T puts video frame 0 in latent frame 0 and
frames ``(k-1)T+1 .. kT`` in latent frame k. The blocks' *token* frames then group ``patch_size_t``
latent frames each.
"""

from __future__ import annotations

import torch

from idvid.backbones.info import BackboneInfo
from idvid.errors import ConfigError


def video_frames_per_frame(num_video_frames: int, info: BackboneInfo, tokens: bool = False) -> list[list[int]]:
    """The video frames that each latent frame (``tokens=True``: each token frame) covers, in order."""
    temporal = info.vae_temporal_compression
    if num_video_frames < 1 or (num_video_frames - 1) % temporal:
        raise ConfigError(
            f"{num_video_frames} video frames do not make whole latent frames for a VAE that compresses "
            f"{temporal} frames into one.",
            f"Use 1 + a multiple of {temporal} frames (data.num_frames).",
        )
    group = info.patch_size_t if tokens else 1
    frame_of_video_frame = [((i + temporal - 1) // temporal) // group for i in range(num_video_frames)]
    groups: list[list[int]] = [[] for _ in range(frame_of_video_frame[-1] + 1)]
    for video_frame, frame in enumerate(frame_of_video_frame):
        groups[frame].append(video_frame)
    return groups


def padded_frame_index(groups: list[list[int]]) -> torch.Tensor:
    """``[frames, M]`` long: each group padded to the longest by repeating its first frame.

    Repeating is exact for attention: attending to duplicated key/value pairs gives the same output
    as attending to one copy of each.
    """
    width = max(len(group) for group in groups)
    return torch.tensor([group + [group[0]] * (width - len(group)) for group in groups], dtype=torch.long)


def pool_video_frames(per_frame: torch.Tensor, info: BackboneInfo) -> torch.Tensor:
    """``[B, F, ...]`` per video frame -> ``[B, f, ...]`` per latent frame: the mean of the frames it covers."""
    groups = video_frames_per_frame(per_frame.shape[1], info)
    return torch.stack([per_frame[:, group].mean(1) for group in groups], dim=1)
