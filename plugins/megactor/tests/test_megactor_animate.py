"""`animate` on a stage-2 MegActor-Sigma checkpoint: --audio-scale 0 is exactly the model without the audio path,
and the audio changes the video when the scale is not 0."""

from __future__ import annotations

import cv2
import hydra
import lightning as L
import numpy as np
import pytest
import torch

from idvid.data.manifest import read_manifest
from idvid.data.video_io import read_mp4
from idvid.demo import build_demo
from idvid.interop import save_module
from idvid.training.module import IdentityVideoModule
from idvid.verbs.animate import WHISPER_MEL_FRAMES, animate
from tests.conftest import compose_config

AUDIO_PATH = ("plan.injectors.audio.", "conditioners.audio.")


def model(*overrides: str):
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=megactor_stage2_mixed", *overrides]).model)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A stage-2 checkpoint whose zero-initialised outputs were nudged (so that no path is a no-op), and the same
    weights in a model without the audio path (no Whisper, no audio attention)."""
    folder = tmp_path_factory.mktemp("megactor-animate")
    with_audio = model()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, parameter in with_audio.plan.named_parameters():
            if "to_out" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    without_audio = model("injectors.audio=null", "conditioners.audio=null")
    kept = {k: v for k, v in with_audio.state_dict().items() if not k.startswith(AUDIO_PATH)}
    without_audio.load_state_dict(kept)  # strict: every other weight is the stage-2 model's
    return save_module(with_audio, folder / "stage2.ckpt"), save_module(without_audio, folder / "no_audio.ckpt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A reference photo (a frame of one demo clip) and a demo clip with its audio track as the driver."""
    videos = {entry["id"]: entry["video"] for entry in read_manifest(build_demo())}
    reference = tmp_path_factory.mktemp("megactor-inputs") / "ref.png"
    cv2.imwrite(str(reference), cv2.cvtColor(read_mp4(videos["astronaut-0"])[0], cv2.COLOR_RGB2BGR))
    return reference, videos["t1-1"]


@pytest.mark.slow
def test_audio_scale_zero_is_the_model_without_audio_and_audio_changes_the_video(checkpoints, inputs, tmp_path):
    stage2, no_audio = checkpoints
    reference, driver = inputs

    def frames(checkpoint, name, **options):
        out = animate(str(checkpoint), str(reference), str(tmp_path / f"{name}.mp4"), drive=driver,
                      num_frames=5, height=48, width=80, steps=2, seed=0, **options)  # fmt: skip
        return read_mp4(out)

    silent = frames(stage2, "scale0", audio=driver, audio_scale=0.0)
    assert np.array_equal(silent, frames(no_audio, "no_audio_path", audio=driver))
    assert not np.array_equal(silent, frames(stage2, "scale1", audio=driver, audio_scale=1.0))


class Recorded(Exception):
    """Raised by the generate spy once it has the batch: the test needs the batch, not the video."""


def test_animate_takes_the_audio_window_from_the_checkpoint(checkpoints, inputs, tmp_path, monkeypatch):
    stage2, no_audio = checkpoints
    reference, driver = inputs
    seen = []

    def recording(self, batch, *args, **kwargs):
        seen.append(batch)
        raise Recorded

    monkeypatch.setattr(IdentityVideoModule, "generate", recording)

    def audio_window(checkpoint, **options):
        with pytest.raises(Recorded):
            animate(str(checkpoint), str(reference), str(tmp_path / "out.mp4"), audio=driver, num_frames=5,
                    height=48, width=80, steps=1, **options)  # fmt: skip
        return seen[-1]["audio_mel"].shape[-1]

    assert audio_window(stage2) == 200  # the demo Whisper's window, from the checkpoint's conditioner
    assert audio_window(stage2, audio_mel_frames=120) == 120  # --audio-mel-frames overrides it
    assert audio_window(no_audio) == WHISPER_MEL_FRAMES  # no conditioner says: Whisper's 30 s
