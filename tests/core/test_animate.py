"""The animate verb: motion scale, the audio/drive batch it builds, audio_scale on injectors, its output."""

from __future__ import annotations

import math

import hydra
import lightning as L
import numpy as np
import pytest
import torch

from idvid.data.audio import has_audio_stream, load_audio
from idvid.data.video_io import read_mp4, write_mp4
from idvid.demo import Camera, render_frames, source_photos, synth_voice
from idvid.errors import ConfigError, UserError
from idvid.faces import DlibFaceAnalyzer
from idvid.injection import TokenInjector
from idvid.interop import save_module
from idvid.registry import REGISTRIES, PluginKind
from idvid.sampling.motion import apply_warps, motion_warps, similarity_transform
from idvid.training.module import IdentityVideoModule
from idvid.verbs.animate import animate, with_audio_scale

from ..conftest import compose_config
from ..data.test_data_batch_keys import check_batch_against_rows, docstring_rows

# The head turns and comes closer (a roll and a zoom of the demo's camera).
TURN = Camera(fill=(0.4, 0.5), pan_x=(-0.03, 0.03), pan_y=(0.0, 0.0), roll_deg=(-8.0, 8.0), caption="")


@pytest.fixture(scope="module")
def analyzer():
    return DlibFaceAnalyzer()


@pytest.fixture(scope="module")
def turning(analyzer):
    """[16, 256, 256, 3] frames of a turning head and their [16, 5, 2] keypoints."""
    photo = source_photos()["astronaut"]
    frames = render_frames(photo, analyzer.detect(photo)[0].box, TURN)
    return frames, np.stack([analyzer.detect(frame)[0].kps for frame in frames]).astype(np.float32)


def test_motion_scale_1_leaves_the_driving_frames_unchanged(turning):
    frames, kps = turning
    warps = motion_warps(kps, 1.0)
    np.testing.assert_allclose(warps, np.tile(np.eye(3)[:2], (len(kps), 1, 1)), atol=1e-9)
    warped, (points,) = apply_warps(frames, [kps], warps)
    assert np.array_equal(warped, frames) and np.array_equal(points, kps)


def test_motion_scale_0_freezes_the_head_at_the_first_frames_pose(turning, analyzer):
    frames, kps = turning
    warped, (points,) = apply_warps(frames, [kps], motion_warps(kps, 0.0))
    moved = np.abs(kps - kps[0]).max(axis=(1, 2))
    assert moved[-1] > 20  # the head really moves in the original
    redetected = np.stack([analyzer.detect(frame)[0].kps for frame in warped])
    for t in range(1, len(frames)):
        angle, scale, _, _ = similarity_transform(kps[0], redetected[t])
        assert abs(math.degrees(angle)) < 1.5 and abs(scale - 1) < 0.03, t  # the pose of the first frame
        assert np.abs(redetected[t].mean(0) - kps[0].mean(0)).max() < 3, t  # at its place


def test_motion_scale_multiplies_rotation_and_scale(turning):
    frames, kps = turning
    _, (points,) = apply_warps(frames, [kps], motion_warps(kps, 2.0))
    for t in (5, 10, 15):
        angle, scale, _, _ = similarity_transform(kps[0], kps[t])
        doubled_angle, doubled_scale, _, _ = similarity_transform(kps[0], points[t])
        assert doubled_angle == pytest.approx(2 * angle, abs=2e-3) and doubled_scale == pytest.approx(
            scale**2, rel=2e-3
        )


class AudioGain(TokenInjector):
    """A test injector with an audio_scale option (what --audio-scale sets)."""

    consumes = ()

    def __init__(self, backbone, site, blocks="all", audio_scale: float = 1.0):
        super().__init__(backbone, site=site, blocks=blocks)
        self.audio_scale = audio_scale

    def forward(self, block_index, hidden_states, prepared):
        return torch.zeros_like(hidden_states)


class NoAudio(AudioGain):
    """A test injector without it."""

    def __init__(self, backbone, site, blocks="all"):
        super().__init__(backbone, site=site, blocks=blocks)


def test_audio_scale_is_set_on_every_injector_that_takes_it():
    for name, cls in (("test_animate.audio_gain", AudioGain), ("test_animate.no_audio", NoAudio)):
        if name not in REGISTRIES[PluginKind.INJECTOR]:
            REGISTRIES[PluginKind.INJECTOR].register(name, cls)
    injectors = {
        "audio": {"name": "test_animate.audio_gain", "site": "attn_ffn"},
        "other": {"name": "test_animate.no_audio", "site": "attn_ffn"},
        "off": None,
    }
    updated = with_audio_scale(injectors, 0.5)
    assert updated["audio"] == {"name": "test_animate.audio_gain", "site": "attn_ffn", "audio_scale": 0.5}
    assert updated["other"] == injectors["other"] and updated["off"] is None
    assert "audio_scale" not in injectors["audio"]  # the checkpoint's config is not changed in place
    with pytest.raises(ConfigError, match="none of the checkpoint's injectors .* has an audio_scale option"):
        with_audio_scale({"other": injectors["other"]}, 0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = compose_config(["experiment=baseline", "backbone=wan_tiny"])
    L.seed_everything(0)
    return save_module(hydra.utils.instantiate(cfg.model), tmp_path_factory.mktemp("ckpt") / "baseline.ckpt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, turning):
    """A reference photo, a driving video with its own voice track, a wav-like audio file and a silent video."""
    import cv2

    folder = tmp_path_factory.mktemp("animate-inputs")
    frames, _ = turning
    cv2.imwrite(str(folder / "ref.png"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    write_mp4(folder / "drive.mp4", frames, fps=8, audio=synth_voice(np.random.default_rng(1), 2.0))
    write_mp4(folder / "silent.mp4", frames, fps=8)
    write_mp4(folder / "blank.mp4", np.full((16, 64, 64, 3), 128, np.uint8), fps=8)
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 128, np.uint8))
    return folder


def test_animate_builds_the_documented_batch_and_writes_a_seeded_mp4_with_the_audio(
    checkpoint, inputs, tmp_path, monkeypatch
):
    seen = []
    original = IdentityVideoModule.generate

    def recording(self, batch, *args, **kwargs):
        seen.append(batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(IdentityVideoModule, "generate", recording)
    common = dict(image=str(inputs / "ref.png"), num_frames=5, height=48, width=80, steps=2, audio_mel_frames=120)
    first = animate(str(checkpoint), out=str(tmp_path / "a.mp4"), drive=str(inputs / "drive.mp4"),
                    audio=str(inputs / "drive.mp4"), seed=3, **common)  # fmt: skip
    again = animate(str(checkpoint), out=str(tmp_path / "b.mp4"), drive=str(inputs / "drive.mp4"),
                    audio=str(inputs / "drive.mp4"), seed=3, **common)  # fmt: skip
    assert first.read_bytes() == again.read_bytes()
    assert read_mp4(first).shape == (5, 48, 80, 3) and has_audio_stream(first)
    assert abs(len(load_audio(first)) - 5 / 8 * 16000) < 1100  # the audio under the 5 frames (AAC pads a frame)
    rows = {
        k: row for k, row in docstring_rows().items() if k.startswith(("audio_", "frame_", "has_audio")) or k == "video"
    }
    rows.pop("frame_indices")  # the clip's frame numbers: training data only
    sizes = {"B": 1, "F": 5, "H": 48, "W": 80, "M": 80, "L": 120}
    batch = seen[0]
    check_batch_against_rows(batch, rows, sizes)
    assert batch["has_audio"].all() and batch["frame_has_face"].all()
    assert torch.isfinite(batch["frame_mouth_boxes"]).all()
    np.testing.assert_allclose(batch["audio_frame_times"][0].numpy(), np.arange(5) / 8, atol=1e-6)
    # Audio only: the driving entries are zeros without a face; the output still has the sound.
    audio_only = animate(str(checkpoint), out=str(tmp_path / "c.mp4"), audio=str(inputs / "drive.mp4"), **common)
    assert has_audio_stream(audio_only) and (seen[-1]["video"] == 0).all() and not seen[-1]["frame_has_face"].any()
    check_batch_against_rows(seen[-1], rows, sizes)
    # Video only: no audio entries' content, no audio track.
    video_only = animate(str(checkpoint), out=str(tmp_path / "d.mp4"), drive=str(inputs / "silent.mp4"), **common)
    assert not has_audio_stream(video_only) and not seen[-1]["has_audio"].any() and (seen[-1]["audio_mel"] == 0).all()


def test_animate_refuses_bad_input_with_named_errors(checkpoint, inputs, tmp_path):
    common = dict(image=str(inputs / "ref.png"), num_frames=5, height=48, width=80, steps=1)
    with pytest.raises(ConfigError, match="--audio AUDIO, --drive VIDEO or both"):
        animate(str(checkpoint), out=str(tmp_path / "x.mp4"), **common)
    with pytest.raises(UserError, match=r"silent\.mp4: no audio stream"):
        animate(str(checkpoint), out=str(tmp_path / "x.mp4"), audio=str(inputs / "silent.mp4"), **common)
    with pytest.raises(UserError, match="no face in any frame of the driving video"):
        animate(str(checkpoint), out=str(tmp_path / "x.mp4"), drive=str(inputs / "blank.mp4"), **common)
    with pytest.raises(ValueError, match="No face found in .*blank"):
        animate(str(checkpoint), out=str(tmp_path / "x.mp4"), audio=str(inputs / "drive.mp4"),
                **{**common, "image": str(inputs / "blank.png")})  # fmt: skip
    with pytest.raises(ConfigError, match="has an audio_scale option"):
        animate(
            str(checkpoint), out=str(tmp_path / "x.mp4"), audio=str(inputs / "drive.mp4"), audio_scale=0.5, **common
        )
    assert not (tmp_path / "x.mp4").exists()
