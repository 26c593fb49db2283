"""Site sequence_concat on every tiny backbone: reference tokens appended to the video's sequence.

Attention policies (reference_isolated vs full), what reaches the output, the rotary positions and
timestep modulation the config asks for, the K/V cache at sampling (exactly the uncached result, one
reference pass per video), gradient checkpointing, and the start-up refusals.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from idvid.backbones import reference_tokens
from idvid.errors import ConfigError
from idvid.injection import InjectionPlan, SequenceConcatInjector
from idvid.randomness import BatchRandom
from idvid.sampling.sampler import sample_latents

from ..core.helpers import backbone_inputs, run_backbone
from .test_backbone_contract import TINY_BACKBONES, make, tiny  # noqa: F401  (tiny: the fixture over both backbones)

#: the submodule each family's timestep enters through (its first argument is the timestep), for the spy
TIME_INPUT = {"cogvideox_tiny": "time_proj", "wan_tiny": "condition_embedder"}


class FaceReference(SequenceConcatInjector):
    """Returns the ``face_latent`` condition; records what each block's reference q/k/v projections read.

    ``weights`` (zero at first) add ``inputs @ W`` to the reference tokens' projections: a path that
    exists only for the reference tokens, to see where gradients flow.
    """

    consumes = ("face_latent",)

    def __init__(self, backbone, **options):
        super().__init__(backbone, **options)
        size = backbone.hidden_size
        self.weights = nn.ParameterDict(
            {f"{b}_{p}": nn.Parameter(torch.zeros(size, size)) for b in range(backbone.num_layers) for p in "qkv"}
        )
        self.seen: dict[tuple[int, str], torch.Tensor] = {}

    def reference(self, conditions, random):
        return conditions["face_latent"]

    def projection_residual(self, block_index, projection, inputs):
        self.seen[(block_index, projection)] = inputs.detach().clone()
        return inputs @ self.weights[f"{block_index}_{projection}"]


def plan_with(backbone, **options) -> InjectionPlan:
    return InjectionPlan({"reference": FaceReference(backbone.info, **options)})


def face_for(latents: torch.Tensor, seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"face_latent": torch.randn(latents.shape[0], 1, *latents.shape[2:], generator=generator)}


ISOLATED = {"attention": "reference_isolated", "timestep": 0, "positions": {"frame": -1, "width_offset": 4}}


@pytest.mark.parametrize("attention", ["reference_isolated", "full"])
def test_isolated_reference_never_sees_the_video_and_full_does(tiny, attention):  # noqa: F811
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    plan = plan_with(backbone, attention=attention, timestep=0)
    face = face_for(latents)
    run_backbone(backbone, plan, face, inputs=(latents, timestep, text))
    before = dict(plan.injectors["reference"].seen)
    run_backbone(backbone, plan, face, inputs=(latents + torch.randn_like(latents), timestep, text))
    after = plan.injectors["reference"].seen
    num_layers = backbone.info.num_layers
    assert set(before) == {(b, p) for b in range(num_layers) for p in "qkv"}
    unchanged = [b for b in range(num_layers) if torch.equal(before[(b, "q")], after[(b, "q")])]
    if attention == "reference_isolated":
        assert unchanged == list(range(num_layers))  # every block's reference hidden states
    else:
        assert unchanged == [0]  # the first block reads the embedded reference; later ones have seen the video


def test_reference_tokens_leave_before_the_head_and_reach_the_loss_through_attention_only(tiny):  # noqa: F811
    backbone = make(tiny).train()
    latents, timestep, text = backbone_inputs(backbone)
    plan = plan_with(backbone, attention="reference_isolated", timestep="video")
    face = face_for(latents)
    face["face_latent"].requires_grad_(True)
    prediction = run_backbone(backbone, plan, face, inputs=(latents, timestep, text))
    assert prediction.shape == (*latents.shape[:2], backbone.info.latent_channels, *latents.shape[3:])
    prediction.square().mean().backward()
    assert face["face_latent"].grad.abs().sum() > 0
    grads = {name: p.grad for name, p in plan.injectors["reference"].weights.items()}
    last = backbone.info.num_layers - 1
    # The last block's reference queries only update reference tokens, which are dropped: no gradient.
    # Its keys and values are read by the video's queries; earlier blocks' queries shape those keys.
    assert grads[f"{last}_q"] is None or grads[f"{last}_q"].abs().sum() == 0
    assert all(grads[f"{last}_{p}"].abs().sum() > 0 for p in "kv")
    assert all(grads[f"{b}_q"].abs().sum() > 0 for b in range(last))


def test_reference_changes_the_prediction_and_zero_reference_weights_add_nothing(tiny):  # noqa: F811
    backbone = make(tiny)
    inputs = backbone_inputs(backbone)
    face = face_for(inputs[0])
    plain = run_backbone(backbone, inputs=inputs)
    with_reference = run_backbone(backbone, plan_with(backbone, **ISOLATED), face, inputs=inputs)
    assert not torch.allclose(with_reference, plain)
    # The injector's q/k/v residuals are zero: the same as a reference with no residual path at all.
    bare = InjectionPlan({"reference": _BareReference(backbone.info, **ISOLATED)})
    torch.testing.assert_close(run_backbone(backbone, bare, face, inputs=inputs), with_reference, rtol=0, atol=0)


class _BareReference(SequenceConcatInjector):
    consumes = ("face_latent",)

    def reference(self, conditions, random):
        return conditions["face_latent"]


class _RecordingStream(reference_tokens.ReferenceStream):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _RecordingStream.made.append(self)


@pytest.mark.parametrize("timestep", [0, "video"])
def test_rotary_positions_and_timestep_are_what_the_config_says(tiny, timestep, monkeypatch):  # noqa: F811
    backbone = make(tiny)
    family = type(backbone).__module__
    monkeypatch.setattr(f"{family}.ReferenceStream", _RecordingStream)
    _RecordingStream.made = []
    times = []
    time_input = getattr(backbone.transformer, TIME_INPUT[tiny.config])
    time_input.register_forward_pre_hook(lambda module, args: times.append(args[0].detach().clone()))
    latents, timestep_values, text = backbone_inputs(backbone)
    positions = {"frame": -1, "height_offset": 2, "width_offset": "after"}  # after: past the video's last column
    options = {"attention": "full", "timestep": timestep, "positions": positions}
    run_backbone(backbone, plan_with(backbone, **options), face_for(latents), inputs=(latents, timestep_values, text))

    (stream,) = _RecordingStream.made
    rows, columns = (n // backbone.info.patch_size for n in latents.shape[3:])
    frame = torch.full((rows * columns,), -1.0)
    row = (torch.arange(rows).repeat_interleave(columns) + 2).float()
    column = (torch.arange(columns).repeat(rows) + columns).float()
    expected = _rotary_at(tiny, backbone, frame, row, column)
    for got, want in zip(stream.rotary, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The family's own video RoPE at frame 0 is what its reference RoPE gives for frame 0 without offsets.
    video_rotary = _video_rotary(tiny, backbone, latents)
    for got, want in zip(_rotary_at(tiny, backbone, frame + 1, row - 2, column - columns), video_rotary):
        torch.testing.assert_close(got.squeeze(), want.squeeze()[: rows * columns], rtol=0, atol=1e-6)

    video_time = torch.as_tensor(timestep_values).float()
    if timestep == 0:
        assert [t.float().tolist() for t in times] == [video_time.tolist(), [0.0] * len(video_time)]
    else:
        assert [t.float().tolist() for t in times] == [video_time.tolist()]


def _rotary_at(tiny, backbone, frame, row, column):  # noqa: F811
    if tiny.config == "wan_tiny":
        return backbone.rotary_at(backbone.transformer, frame, row, column)
    return backbone.rotary_at(frame, row, column)


def _video_rotary(tiny, backbone, latents):  # noqa: F811
    if tiny.config == "wan_tiny":
        return backbone.transformer.rope(latents.permute(0, 2, 1, 3, 4))
    return backbone.rotary_embedding(latents.shape[1], latents.shape[3], latents.shape[4], latents.device)


def test_cached_reference_sampling_equals_uncached_and_runs_the_reference_once(tiny, monkeypatch):  # noqa: F811
    backbone = make(tiny)
    plan = plan_with(backbone, kv_cache=True, **ISOLATED)
    latents, _, text = backbone_inputs(backbone, batch=1)
    face = face_for(latents)
    calls = []
    original = type(backbone).cache_reference
    monkeypatch.setattr(type(backbone), "cache_reference", lambda self, *a: calls.append(1) or original(self, *a))

    def sample(use_cache):
        return sample_latents(
            backbone,
            plan,
            face,
            text,
            text * 0,
            latents.shape,
            num_inference_steps=3,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(0),
            use_reference_cache=use_cache,
        )

    uncached = sample(False)
    seen_uncached = len(plan.injectors["reference"].seen)
    plan.injectors["reference"].seen.clear()
    cached = sample(True)
    assert torch.equal(cached, uncached)
    assert calls == [1]
    # Cached: the reference path ran once for the whole video (once per block and projection), not per step.
    assert len(plan.injectors["reference"].seen) == seen_uncached == 3 * backbone.info.num_layers


def test_gradient_checkpointing_gives_the_same_prediction_with_a_reference(tiny):  # noqa: F811
    backbone = make(tiny)
    inputs = backbone_inputs(backbone)
    plan = plan_with(backbone, attention="full", timestep="video")
    face = face_for(inputs[0])
    plain = run_backbone(backbone, plan, face, inputs=inputs)
    backbone.gradient_checkpointing = True
    with torch.enable_grad():
        checkpointed = run_backbone(backbone, plan, face, inputs=inputs)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ refusals
def test_a_reference_the_patching_cannot_tile_is_refused(tiny):  # noqa: F811
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    odd = {"face_latent": torch.randn(latents.shape[0], 1, latents.shape[2], 7, 8)}
    with pytest.raises(ConfigError, match=r"(?s)7 x 8.*does not tile.*multiples of 2"):
        run_backbone(backbone, plan_with(backbone), odd, inputs=(latents, timestep, text))


def test_reference_images_the_patching_cannot_tile_are_refused_at_start_up(tiny):  # noqa: F811
    plan = plan_with(make(tiny))
    plan.check_reference_image_size(64, 48)  # latents 8 x 6: tiled by 2 x 2 patches
    with pytest.raises(ConfigError, match=r"(?s)1 x 8 x 7.*multiples of 16 pixels"):
        plan.check_reference_image_size(64, 56)
    InjectionPlan({}).check_reference_image_size(64, 56)  # no reference: nothing to refuse


def test_a_backbone_that_cannot_isolate_the_reference_is_refused_at_start_up(tiny):  # noqa: F811
    backbone = make(tiny)
    plan_with(backbone, attention="reference_isolated").check_backbone(backbone)  # both adapters can
    backbone.__class__ = type("FullOnly", (type(backbone),), {"reference_attention": ("full",)})
    with pytest.raises(ConfigError, match=r"(?s)attention=reference_isolated.*cannot mask.*attention=full"):
        plan_with(backbone, attention="reference_isolated").check_backbone(backbone)


def test_a_cache_of_a_reference_that_reads_the_video_is_refused(tiny):  # noqa: F811
    info = make(tiny).info
    with pytest.raises(ConfigError, match=r"(?s)kv_cache=true.*attention=full.*reference_isolated and timestep=0"):
        FaceReference(info, attention="full", timestep=0, kv_cache=True)
    with pytest.raises(ConfigError, match="timestep=video"):
        FaceReference(info, attention="reference_isolated", timestep="video", kv_cache=True)
    with pytest.raises(ConfigError, match="frame"):
        FaceReference(info, positions={"frame": "before"})
    with pytest.raises(ConfigError, match="one reference sequence"):
        InjectionPlan({"a": _BareReference(info), "b": _BareReference(info)})


def test_the_prepared_reference_travels_with_the_token_grid(tiny):  # noqa: F811
    backbone = make(tiny)
    plan = plan_with(backbone)
    latents = backbone_inputs(backbone)[0]
    prepared = plan.prepare(face_for(latents), BatchRandom(torch.Generator().manual_seed(0)))
    assert prepared.reference is not None and prepared.reference.is_latent
    assert prepared.with_token_grid((1, 2, 2)).reference is prepared.reference


@pytest.mark.parametrize("expert", ["high_noise", "both"])
def test_two_expert_wan_caches_the_reference_of_each_expert(expert):
    wan = next(t for t in TINY_BACKBONES if t.config == "wan_tiny")
    backbone = make(wan, boundary_ratio=0.5, expert=expert)
    plan = plan_with(backbone, kv_cache=True, **ISOLATED)
    shape = backbone.latent_shape(1, *backbone.default_video_size)
    latents, text = torch.randn(shape), torch.randn(backbone.encode_text([""]).shape)
    face = face_for(latents)
    injection = plan.prepare(face, BatchRandom(torch.Generator().manual_seed(0)))
    assert len(backbone.cache_reference(injection, shape).reference.cache) == 2  # one per expert
    cached, uncached = (
        sample_latents(
            backbone, plan, face, text, text * 0, shape, num_inference_steps=4,
            generator=torch.Generator().manual_seed(0), use_reference_cache=use_cache,
        )
        for use_cache in (True, False)
    )  # fmt: skip
    assert torch.equal(cached, uncached)
