"""Pictures for TensorBoard: frame grids, animated videos and face spectra of generated samples, and mp4 files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from idvid.data.video_io import write_mp4


def frame_grid(video: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, F, 3, H, W]`` in [-1, 1] -> one ``[3, B*H, (F+1)*W]`` image in [0, 1].

    One row per sample; the first column is the reference photo when given (else black).
    """
    batch, frames, channels, height, width = video.shape
    if references is None:
        references = torch.full((batch, channels, height, width), -1.0)
    references = torch.nn.functional.interpolate(references.float(), size=(height, width), mode="bilinear")
    rows = torch.cat([references.unsqueeze(1), video.float()], dim=1)  # [B, F+1, 3, H, W]
    grid = rows.permute(2, 0, 3, 1, 4).reshape(channels, batch * height, (frames + 1) * width)
    return ((grid + 1) / 2).clamp(0, 1)


def write_video(path: Path, video: torch.Tensor, fps: int = 8) -> Path:
    """Write ``[F, 3, H, W]`` in [-1, 1] as an mp4."""
    frames = (((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)).permute(0, 2, 3, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, fps=fps)
    return path


def add_video_summary(writer, tag: str, video: torch.Tensor, step: int, fps: int = 8) -> None:
    """Log ``[F, 3, H, W]`` in [-1, 1] as an animated GIF image summary (what TensorBoard shows as a video).

    ``SummaryWriter.add_video`` does the same but needs moviepy; PIL writes the GIF here.
    """
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = (((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_generated_videos(
    loggers: Sequence[Any],
    video: torch.Tensor,
    batch: Mapping[str, Any],
    step: int,
    out_dir: Path,
    frequency: Mapping[str, Any] | None = None,
) -> None:
    """Validation samples ``[B, F, 3, H, W]`` in [-1, 1]: to TensorBoard, as ``stepNNNNNN_<clip id>.mp4`` and
    their frame grid (reference first in each row) as ``stepNNNNNN.png``.

    TensorBoard gets ``val/samples`` (one row per sample, the reference photo first), an animated
    ``val/video/<clip id>`` each, and, when ``frequency`` settings are given and the batch has face
    masks, the face-region spectra of the samples (ConsisID Fig. 3) under ``val/frequency``.
    """
    grid = frame_grid(video, references=batch["ref_image"].cpu())
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):  # TensorBoard only
            continue
        experiment.add_image("val/samples", grid, step)
        for index, sample in enumerate(video):
            add_video_summary(experiment, f"val/video/{batch['id'][index]}", sample, step)
        if frequency and batch.get("face_mask") is not None:  # off, or no face mask to find the face with
            from idvid.evaluation.frequency import FrequencyConfig, log_validation_spectra

            masks = batch["face_mask"].cpu()
            log_validation_spectra(experiment, "val/frequency", video, masks, step, FrequencyConfig(**frequency))
    for index, sample in enumerate(video):  # deterministic names: step and clip id
        write_video(out_dir / f"step{step:06d}_{batch['id'][index]}.mp4", sample)
    write_png(out_dir / f"step{step:06d}.png", grid)


def write_png(path: Path, image: torch.Tensor) -> Path:
    """Write ``[3, H, W]`` in [0, 1] as a PNG."""
    from PIL import Image

    pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
