"""What every backbone adapter shares to apply an attention exclusion (``idvid.injection.attention_exclusion``).

``token_region`` maps a pixel mask to the video tokens (a token is in the region when any of its pixels
is); ``video_attention_mask`` makes the boolean mask over video query x video key pairs that SDPA takes
(True: may attend); ``surround_video_mask`` places it among the other tokens of an attention call (text
tokens before the video, reference keys after it), which attend and are attended as usual.
"""

from __future__ import annotations

import torch

from idvid.injection.attention_exclusion import AttentionExclusion


def token_region(
    mask: torch.Tensor, token_grid: tuple[int, int, int], temporal_compression: int, patch_size_t: int = 1
) -> torch.Tensor:
    """``[B, F, 1, H, W]`` pixel mask -> ``[B, f * h * w]`` bool over the video tokens (frame, row, column order).

    A causal video VAE's latent frame 0 is pixel frame 0 and latent frame ``i >= 1`` covers pixel frames
    ``(i - 1) * t + 1 .. i * t`` (``t = temporal_compression``); a token covers ``patch_size_t`` latent frames
    and an ``H / h`` x ``W / w`` block of pixels.
    """
    batch, num_frames, _, height, width = mask.shape
    frames, rows, columns = token_grid
    latent_frames = frames * patch_size_t
    if (
        num_frames != 1 + (latent_frames - 1) * temporal_compression
        or height % rows
        or width % columns
        or height < rows
        or width < columns
    ):
        raise ValueError(
            f"An attention-exclusion mask of {num_frames} frames of {height}x{width} does not cover the video tokens "
            f"{token_grid} (frames x rows x columns, {latent_frames} latent frames at {temporal_compression} video "
            f"frames each after the first); give the masks on the training video's frames and size."
        )
    region = mask[:, :, 0] > 0  # [B, F, H, W]
    first, rest = region[:, :1], region[:, 1:].unflatten(1, (latent_frames - 1, temporal_compression)).any(2)
    region = torch.cat([first, rest], dim=1).unflatten(1, (frames, patch_size_t)).any(2)
    region = region.unflatten(3, (columns, width // columns)).any(4)
    region = region.unflatten(2, (rows, height // rows)).any(3)
    return region.flatten(1)


def video_attention_mask(
    exclusion: AttentionExclusion,
    token_grid: tuple[int, int, int],
    temporal_compression: int,
    patch_size_t: int = 1,
) -> torch.Tensor | None:
    """``[B, 1, N, N]`` bool over video queries x video keys (True: may attend), or None when nothing is excluded.

    A token in both regions keeps its own key, so no query is left without a key to attend to.
    """
    queries = token_region(exclusion.queries, token_grid, temporal_compression, patch_size_t)
    keys = token_region(exclusion.keys, token_grid, temporal_compression, patch_size_t)
    excluded = queries[:, :, None] & keys[:, None, :]
    excluded.diagonal(dim1=1, dim2=2).fill_(False)
    if not bool(excluded.any()):
        return None  # the backbone runs its usual attention, bit for bit
    return ~excluded.unsqueeze(1)


def surround_video_mask(video_mask: torch.Tensor, leading: int = 0, trailing_keys: int = 0) -> torch.Tensor:
    """The video x video mask ``[B, 1, N, N]`` inside an attention call whose queries are ``leading`` tokens
    (e.g. text) then the video, and whose keys are those plus ``trailing_keys`` more (e.g. reference keys):
    ``[B, 1, leading + N, leading + N + trailing_keys]``, True outside the video x video block."""
    batch, _, tokens, _ = video_mask.shape
    if not leading and not trailing_keys:
        return video_mask
    mask = video_mask.new_ones(batch, 1, leading + tokens, leading + tokens + trailing_keys)
    mask[:, :, leading:, leading : leading + tokens] = video_mask
    return mask
