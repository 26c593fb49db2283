"""MegActor-Sigma's modules on both tiny backbones: Whisper audio tokens, audio attention, driven encoder,
temporal attention (zero-init no-ops, the audio knob, which tokens each attention may mix)."""

from __future__ import annotations

import pytest
import torch
from idvid_megactor import AudioAttention, DrivenEncoder, DrivingFrames, TemporalAttention, WhisperAudio
from idvid_megactor.whisper_audio import write_tiny_whisper
from transformers import WhisperModel

from idvid.errors import ConfigError, MissingFileError, UserError
from idvid.injection import InjectionPlan
from idvid.randomness import BatchRandom
from tests.backbones.test_backbone_contract import TINY_BACKBONES, make
from tests.core.helpers import TINY_INFO, backbone_inputs, run_backbone

FRAMES = 9  # video frames of the demo's clips: 3 latent frames on both tiny backbones
WINDOW = 4


@pytest.fixture(params=TINY_BACKBONES, ids=str, scope="module")
def tiny(request):
    return request.param


@pytest.fixture(scope="module")
def backbone(tiny):
    return make(tiny)


def token_grid(backbone):
    _, frames, _, height, width = backbone.latent_shape(1, *backbone.default_video_size)
    patch = backbone.info.patch_size
    return frames // backbone.info.patch_size_t, height // patch, width // patch


def random_audio(seed=0, width=32):
    return torch.randn(2, FRAMES, WINDOW, width, generator=torch.Generator().manual_seed(seed))


def with_random_outputs(injector, seed=1):
    """Non-zero output projections: zero-init makes every residual zero, which would hide what a test checks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in injector.named_parameters():
            if "to_out" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return injector


def residual(injector, conditions, hidden, grid):
    state = injector.prepare(conditions, BatchRandom(torch.Generator().manual_seed(0)))
    return injector(injector.block_indices[0], hidden, state, token_grid=grid)


# ------------------------------------------------------------------ Whisper audio tokens
@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny_whisper")


def test_whisper_tokens_are_the_encoder_tokens_around_each_frame_time(whisper_folder):
    audio = WhisperAudio(TINY_INFO, pretrained=str(whisper_folder), window=WINDOW)
    mel = torch.randn(2, 80, 150, generator=torch.Generator().manual_seed(0))
    times = torch.tensor([[0.0, 0.125, 0.25], [0.5, 1.0, 1.234]])
    tokens = audio({"audio_mel": mel, "audio_frame_times": times, "has_audio": torch.tensor([True, True])}, None, None)
    assert tokens["audio_tokens"].shape == (2, 3, WINDOW, 32)
    # the same encoder as the folder's model, fed Whisper's full-length input (zero-padded mel)
    encoder = WhisperModel.from_pretrained(whisper_folder).get_encoder().eval()
    full = encoder(input_features=torch.nn.functional.pad(mel, (0, 50))).last_hidden_state  # [2, 100, 32]
    for sample in range(2):
        for frame in range(3):
            centre = round(float(times[sample, frame]) * 50)  # 50 encoder tokens per second
            for slot, index in enumerate(range(centre - WINDOW // 2, centre - WINDOW // 2 + WINDOW)):
                expected = full[sample, index] if 0 <= index < 100 else torch.zeros(32)
                torch.testing.assert_close(tokens["audio_tokens"][sample, frame, slot], expected)
    silent = audio({"audio_mel": mel, "audio_frame_times": times, "has_audio": torch.tensor([True, False])}, None, None)
    assert silent["audio_tokens"][1].abs().sum() == 0
    torch.testing.assert_close(silent["audio_tokens"][0], tokens["audio_tokens"][0], rtol=0, atol=0)
    assert not any(p.requires_grad for p in audio.parameters())  # frozen


def test_whisper_refuses_a_missing_folder_a_too_long_mel_and_a_batch_without_audio(tmp_path, whisper_folder):
    with pytest.raises(MissingFileError, match=str(tmp_path / "nowhere")) as error:
        WhisperAudio(TINY_INFO, pretrained=str(tmp_path / "nowhere"))
    assert "WhisperModel" in str(error.value) and "whisper-tiny" in str(error.value)
    audio = WhisperAudio(TINY_INFO, pretrained=str(whisper_folder))
    with pytest.raises(ConfigError, match="data.audio_mel_frames=200"):
        audio.encode(torch.zeros(1, 80, 201))
    with pytest.raises(UserError, match="(?s)no audio_mel, audio_frame_times, has_audio.*megactor_stage1_visual"):
        audio({"video": torch.zeros(1, 9, 3, 8, 8)}, None, None)


# ------------------------------------------------------------------ audio attention
def test_audio_attention_starts_as_a_no_op_and_scale_zero_is_no_audio(backbone):
    injector = AudioAttention(backbone.info, audio_dim=32, blocks="all")
    plan = InjectionPlan({"audio": injector})
    conditions = {"audio_tokens": random_audio()}
    plain = run_backbone(backbone)
    torch.testing.assert_close(run_backbone(backbone, plan, conditions), plain, rtol=0, atol=0)  # zero-initialised
    with_random_outputs(injector)
    assert not torch.equal(run_backbone(backbone, plan, conditions), plain)
    injector.audio_scale = 0.0
    torch.testing.assert_close(run_backbone(backbone, plan, conditions), plain, rtol=0, atol=0)


def test_audio_residual_is_linear_in_the_scale_and_each_frame_hears_only_its_window(backbone):
    grid = token_grid(backbone)
    injector = with_random_outputs(AudioAttention(backbone.info, audio_dim=32))
    hidden = torch.randn(2, grid[0] * grid[1] * grid[2], backbone.info.hidden_size)
    audio = random_audio()
    one = residual(injector, {"audio_tokens": audio}, hidden, grid)
    injector.audio_scale = 2.5
    torch.testing.assert_close(residual(injector, {"audio_tokens": audio}, hidden, grid), 2.5 * one)
    injector.audio_scale = 1.0
    # the last token frame covers video frames 5..8 (4 per latent frame after the first): change only their audio
    changed = audio.clone()
    changed[:, 5:] = torch.randn(2, 4, WINDOW, 32)
    other = residual(injector, {"audio_tokens": changed}, hidden, grid)
    per_frame = (other - one).abs().view(2, grid[0], -1).sum(dim=(0, 2))
    assert per_frame[:-1].tolist() == [0.0] * (grid[0] - 1) and per_frame[-1] > 0


# ------------------------------------------------------------------ driven encoder
def test_driven_encoder_leaves_the_output_unchanged_at_step_zero(tiny, backbone):
    latents, timestep, text = backbone_inputs(backbone)
    plain = backbone(latents, timestep, text, InjectionPlan({}).prepare({}, None))
    encoder = DrivenEncoder(backbone.info, channels=8)
    batch, frames, _, height, width = latents.shape
    video = torch.rand(batch, FRAMES, 3, height * 8, width * 8) * 2 - 1
    conditions = DrivingFrames(backbone.info)({"video": video}, backbone, None)
    plan = InjectionPlan({"drive": encoder})
    extra = plan.concat_latents(conditions, latents)
    assert extra.shape == (batch, frames, 8, height, width) and extra.abs().sum() > 0
    widened = make(tiny)  # the same seed: the same weights, then widened
    widened.set_input_channels(plan.extra_input_channels)
    out = widened(torch.cat([latents, extra], dim=2), timestep, text, plan.prepare(conditions, None))
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    # the drive_video the recipe writes takes precedence over the clip
    driving = DrivingFrames(backbone.info)({"video": video, "drive_video": -video}, backbone, None)
    assert driving["driving_frames"].equal(-video)


# ------------------------------------------------------------------ temporal attention
def test_temporal_attention_is_a_zero_init_no_op_in_odd_blocks(backbone):
    injector = TemporalAttention(backbone.info)
    assert injector.block_indices == [1, 3]
    plan = InjectionPlan({"temporal": injector})
    torch.testing.assert_close(run_backbone(backbone, plan), run_backbone(backbone), rtol=0, atol=0)
    with_random_outputs(injector)
    assert not torch.equal(run_backbone(backbone, plan), run_backbone(backbone))


def test_temporal_attention_mixes_only_across_frames(backbone):
    frames, rows, columns = grid = token_grid(backbone)
    injector = with_random_outputs(TemporalAttention(backbone.info))
    hidden = torch.randn(1, frames * rows * columns, backbone.info.hidden_size)
    before = injector(1, hidden, None, token_grid=grid)
    changed = hidden.clone().view(1, frames, rows, columns, -1)
    changed[0, 0, 1, 2] += 1.0  # one token: frame 0, row 1, column 2
    after = injector(1, changed.view_as(hidden), None, token_grid=grid)
    moved = (after - before).abs().sum(-1).view(frames, rows, columns) > 0
    expected = torch.zeros(frames, rows, columns, dtype=torch.bool)
    expected[:, 1, 2] = True  # every frame at that position, nothing elsewhere
    assert torch.equal(moved, expected)
