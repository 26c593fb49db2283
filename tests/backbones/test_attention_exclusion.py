"""A video self-attention exclusion on every tiny backbone (``idvid.injection.attention_exclusion``).

Query tokens of one region do not read key tokens of another (per sample); every other pair, the text
tokens, the reference tokens (site sequence_concat) and cross-attention are untouched; without an
exclusion (or with empty regions) the adapters run exactly their usual attention.
"""

from __future__ import annotations

import types

import pytest
import torch

from idvid.backbones.attention_exclusion import token_region, video_attention_mask
from idvid.errors import ConfigError
from idvid.injection import AttentionExclusion, InjectionPlan, Site, TokenInjector
from idvid.randomness import BatchRandom
from idvid.training.module import IdentityVideoModule

from ..core.helpers import backbone_inputs
from .test_backbone_contract import TINY_BACKBONES, make, tiny  # noqa: F401  (tiny: the fixture over both backbones)
from .test_sequence_concat import face_for, plan_with

# The tiny backbones' default video: 9 frames of 64 x 64 -> 3 x 8 x 8 latents -> 3 x 4 x 4 tokens of 16 x 16 px.
FRAMES, SIZE, TOKEN_PX = 9, 64, 16
GRID = (3, 4, 4)
QUERY_TOKENS = [(f, 3, c) for f in range(3) for c in (1, 2)]  # "mouth": the bottom row, middle columns
KEY_TOKENS = [(f, 0, c) for f in range(3) for c in (1, 2)]  # "eyes": the top row, middle columns


class FirstBlockSpy(TokenInjector):
    """Records the video tokens after block 0's attention (site attn_ffn) and adds nothing.

    There a token depends on the other tokens only through the self-attention (patch embedding, norms,
    the text cross-attention and the modulation act per token)."""

    consumes = ()

    def __init__(self, backbone):
        super().__init__(backbone, site=Site.ATTN_FFN, blocks=[0])
        self.seen: torch.Tensor | None = None

    def forward(self, block_index, hidden_states, prepared):
        self.seen = hidden_states.detach().clone()
        return torch.zeros_like(hidden_states)


def pixel_mask(tokens: list[tuple[int, int, int]], samples: list[int], batch: int = 2) -> torch.Tensor:
    """``[B, F, 1, H, W]`` pixels of ``tokens`` (the video frames each latent frame covers), in ``samples`` only."""
    mask = torch.zeros(batch, FRAMES, 1, SIZE, SIZE)
    frames_of = {0: [0], 1: [1, 2, 3, 4], 2: [5, 6, 7, 8]}
    for sample in samples:
        for frame, row, column in tokens:
            rows, columns = (
                slice(row * TOKEN_PX, (row + 1) * TOKEN_PX),
                slice(column * TOKEN_PX, (column + 1) * TOKEN_PX),
            )
            mask[sample, frames_of[frame], :, rows, columns] = 1
    return mask


def index_of(tokens: list[tuple[int, int, int]]) -> list[int]:
    return [f * 16 + r * 4 + c for f, r, c in tokens]


def perturb_tokens(latents: torch.Tensor, tokens: list[tuple[int, int, int]]) -> torch.Tensor:
    """The latents with new values under ``tokens`` (2 x 2 latent pixels each), in every sample."""
    changed = latents.clone()
    generator = torch.Generator().manual_seed(7)
    for frame, row, column in tokens:
        patch = changed[:, frame, :, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2]
        patch.copy_(torch.randn(patch.shape, generator=generator))
    return changed


def first_block_tokens(backbone, exclusion=None, inputs=None, plan=None, conditions=None):
    """The video tokens after block 0's attention, and the prediction, of one forward."""
    spy = FirstBlockSpy(backbone.info)
    injectors = {"spy": spy, **(dict(plan.injectors) if plan is not None else {})}
    injection = InjectionPlan(injectors).prepare(conditions or {}, BatchRandom(torch.Generator().manual_seed(0)))
    prediction = backbone(*(inputs or backbone_inputs(backbone)), injection.with_attention_exclusion(exclusion))
    return spy.seen, prediction


def mouth_excludes_eyes_in_sample_0() -> AttentionExclusion:
    return AttentionExclusion(pixel_mask(QUERY_TOKENS, [0]), pixel_mask(KEY_TOKENS, [0]))


def changed_tokens(before: torch.Tensor, after: torch.Tensor, sample: int) -> set[int]:
    return set(torch.nonzero((before[sample] != after[sample]).any(-1)).flatten().tolist())


def test_excluded_queries_do_not_read_the_key_region_and_other_queries_do(tiny):  # noqa: F811
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    moved = (perturb_tokens(latents, KEY_TOKENS), timestep, text)
    exclusion = mouth_excludes_eyes_in_sample_0()

    before, _ = first_block_tokens(backbone, exclusion, (latents, timestep, text))
    after, _ = first_block_tokens(backbone, exclusion, moved)
    queries, every_token = set(index_of(QUERY_TOKENS)), set(range(48))
    # Sample 0 excludes: its mouth queries see nothing of the change; every other query does.
    assert changed_tokens(before, after, 0) == every_token - queries
    # Sample 1 has an empty query region: all its tokens read the key region, as without an exclusion.
    assert changed_tokens(before, after, 1) == every_token
    plain_before, _ = first_block_tokens(backbone, None, (latents, timestep, text))
    plain_after, _ = first_block_tokens(backbone, None, moved)
    assert changed_tokens(plain_before, plain_after, 0) == every_token


def test_excluded_queries_still_read_the_text_and_the_unexcluded_sample_matches_the_usual_attention(tiny):  # noqa: F811
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    exclusion = mouth_excludes_eyes_in_sample_0()
    before, prediction = first_block_tokens(backbone, exclusion, (latents, timestep, text))
    after, _ = first_block_tokens(backbone, exclusion, (latents, timestep, text + 1.0))
    assert changed_tokens(before, after, 0) >= set(index_of(QUERY_TOKENS))  # (CogVideoX: joint attention)
    # Sample 1 excludes nothing: the masked attention call gives it what the family's own processor gives.
    _, plain = first_block_tokens(backbone, None, (latents, timestep, text))
    torch.testing.assert_close(prediction[1], plain[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(prediction[0], plain[0])


def test_no_exclusion_or_empty_regions_run_the_usual_attention_bit_for_bit(tiny, monkeypatch):  # noqa: F811
    backbone = make(tiny)
    inputs = backbone_inputs(backbone)
    calls = []
    for block in getattr(backbone.transformer, tiny.blocks):  # count the family's own self-attention calls

        def counting_forward(*args, _original=block.attn1.forward, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(block.attn1, "forward", counting_forward)
    num_layers = backbone.info.num_layers
    _, plain = first_block_tokens(backbone, None, inputs)
    assert len(calls) == num_layers
    queries, keys = pixel_mask(QUERY_TOKENS, [0, 1]), pixel_mask(KEY_TOKENS, [0, 1])
    for empty in (AttentionExclusion(torch.zeros_like(queries), keys), AttentionExclusion(queries, 0 * keys)):
        calls.clear()
        _, prediction = first_block_tokens(backbone, empty, inputs)
        assert torch.equal(prediction, plain) and len(calls) == num_layers
    calls.clear()
    first_block_tokens(backbone, AttentionExclusion(queries, keys), inputs)
    assert calls == []  # the adapter's masked attention call instead


@pytest.mark.parametrize("attention", ["reference_isolated", "full"])
def test_exclusion_with_reference_tokens_masks_only_video_pairs(tiny, attention):  # noqa: F811
    backbone = make(tiny)
    latents, timestep, text = backbone_inputs(backbone)
    plan = plan_with(backbone, attention=attention, timestep=0)
    face = face_for(latents)
    exclusion = mouth_excludes_eyes_in_sample_0()

    def run(inputs, conditions):
        return first_block_tokens(backbone, exclusion, inputs, plan, conditions)[0]

    before = run((latents, timestep, text), face)
    seen_before = dict(plan.injectors["reference"].seen)
    after = run((perturb_tokens(latents, KEY_TOKENS), timestep, text), face)
    assert changed_tokens(before, after, 0) == set(range(48)) - set(index_of(QUERY_TOKENS))
    if attention == "full":  # the reference queries are not masked: block 1's reference read the key region
        assert not torch.equal(seen_before[(1, "q")], plan.injectors["reference"].seen[(1, "q")])
    # The excluded queries still read the reference's keys.
    other_face = {"face_latent": face["face_latent"] + 1.0}
    assert changed_tokens(before, run((latents, timestep, text), other_face), 0) >= set(index_of(QUERY_TOKENS))


def test_the_mask_survives_gradient_checkpointing(tiny):  # noqa: F811
    backbone = make(tiny)
    inputs = backbone_inputs(backbone)
    exclusion = mouth_excludes_eyes_in_sample_0()
    _, expected = first_block_tokens(backbone, exclusion, inputs)
    backbone.gradient_checkpointing = True
    with torch.enable_grad():
        _, checkpointed = first_block_tokens(backbone, exclusion, inputs)
    torch.testing.assert_close(checkpointed, expected, rtol=0, atol=0)


def test_token_region_follows_the_causal_vae_and_the_patches():
    mask = torch.zeros(1, FRAMES, 1, SIZE, SIZE)
    mask[0, 5, 0, 17, 40] = 1  # frame 5 -> latent frame 2 (frames 5-8); pixel row 17 -> token row 1; col 40 -> 2
    mask[0, 0, 0, 63, 0] = 1  # frame 0 -> latent frame 0 alone; the bottom-left token
    assert torch.nonzero(token_region(mask, GRID, temporal_compression=4)[0]).flatten().tolist() == [12, 2 * 16 + 6]
    mask = torch.zeros(1, FRAMES, 1, SIZE, SIZE)
    mask[0, 4, 0, 0, 0] = 1  # frame 4 is the last of latent frame 1
    assert torch.nonzero(token_region(mask, GRID, temporal_compression=4)[0]).flatten().tolist() == [16]
    with pytest.raises(ValueError, match="8 frames of 64x64 does not cover the video tokens"):
        token_region(torch.zeros(1, 8, 1, SIZE, SIZE), GRID, temporal_compression=4)


def test_a_token_in_both_regions_keeps_its_own_key():
    region = pixel_mask([(0, 0, 0), (0, 0, 1)], [0], batch=1)
    mask = video_attention_mask(AttentionExclusion(region, region), GRID, temporal_compression=4)
    assert mask.shape == (1, 1, 48, 48)
    assert mask[0, 0, 0].tolist()[:3] == [True, False, True] and mask[0, 0, 1].tolist()[:3] == [False, True, True]
    assert bool(mask[0, 0, 2:].all())  # other queries read every key


def test_a_backbone_that_does_not_apply_the_exclusion_refuses_it_and_half_a_request_is_refused():
    batch = {"attention_exclusion_queries": torch.zeros(1, 1, 1, 8, 8)}
    with pytest.raises(ConfigError, match="attention_exclusion_keys"):
        AttentionExclusion.from_batch(batch)
    batch["attention_exclusion_keys"] = torch.zeros(1, 1, 1, 8, 8)
    module = types.SimpleNamespace(backbone=types.SimpleNamespace(honours_attention_exclusion=False))
    with pytest.raises(ConfigError, match="does not apply one"):
        IdentityVideoModule._attention_exclusion(module, batch)
    assert IdentityVideoModule._attention_exclusion(module, {}) is None
