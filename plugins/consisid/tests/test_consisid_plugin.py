"""ConsisID plugin: math parity with diffusers' modules, the GFE layout, registration (recipe: test_consisid_recipe)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import consisid_transformer_3d as reference
from idvid_consisid import GlobalFaceLatent, LocalFaceCrossAttention, LocalFacialExtractor, perceiver_cross_attention

from idvid.backbones import BackboneInfo
from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind

INFO = BackboneInfo(
    hidden_size=32,
    num_layers=4,
    latent_channels=16,
    text_hidden_size=32,
    vae_temporal_compression=4,
    vae_spatial_compression=8,
    patch_size=2,
    patch_size_t=1,
)
LFE_SIZES = dict(
    id_dim=20,
    vit_dim=16,
    depth=4,
    dim_head=8,
    heads=2,
    num_id_token=3,
    num_queries=6,
    output_dim=24,
    ff_mult=2,
    num_scale=2,
)


def identity_inputs(batch=2, tokens=7):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 20, generator=g), [torch.randn(batch, tokens, 16, generator=g) for _ in range(2)]


def test_local_facial_extractor_matches_diffusers():
    torch.manual_seed(0)
    ours = LocalFacialExtractor(**LFE_SIZES)
    theirs = reference.LocalFacialExtractor(**LFE_SIZES)
    theirs.load_state_dict(ours.state_dict())  # same parameter names, key for key
    id_cond, vit = identity_inputs()
    out = ours(id_cond, vit)
    assert out.shape == (2, 6, 24)
    torch.testing.assert_close(out, theirs(id_cond, vit), rtol=0, atol=1e-6)


def test_perceiver_cross_attention_matches_diffusers():
    torch.manual_seed(0)
    ours = perceiver_cross_attention(dim=32, dim_head=8, heads=4, kv_dim=24)
    theirs = reference.PerceiverCrossAttention(dim=32, dim_head=8, heads=4, kv_dim=24)
    theirs.load_state_dict(ours.state_dict())
    tokens, video = torch.randn(2, 6, 24), torch.randn(2, 50, 32)
    torch.testing.assert_close(ours(tokens, video), theirs(tokens, video), rtol=0, atol=1e-6)


def test_lfe_size_mismatch_names_the_fix():
    lfe = LocalFacialExtractor(**LFE_SIZES)
    with pytest.raises(ValueError, match="id_cond has width 9 but the LFE expects id_dim=20"):
        lfe(torch.randn(1, 9), identity_inputs(1)[1])


@pytest.mark.parametrize("use_kps", [True, False])
def test_global_face_latent_puts_face_at_frame_0_and_kps_at_frame_1(use_kps):
    injector = GlobalFaceLatent(INFO, use_kps=use_kps)
    assert injector.channels == 16
    assert injector.consumes == (("face_latent", "kps_latent") if use_kps else ("face_latent",))
    face, kps = torch.randn(2, 1, 16, 4, 4), torch.randn(2, 1, 16, 4, 4)
    extra = injector.concat_latents({"face_latent": face, "kps_latent": kps}, torch.randn(2, 3, 16, 4, 4))
    assert torch.equal(extra[:, 0], face[:, 0])
    assert torch.equal(extra[:, 1], kps[:, 0] if use_kps else torch.zeros_like(kps[:, 0]))
    assert extra[:, 2:].abs().sum() == 0


def test_kps_needs_two_latent_frames():
    with pytest.raises(ValueError, match="only 1 latent frame"):
        GlobalFaceLatent(INFO).concat_latents(
            {"face_latent": torch.zeros(1, 1, 16, 2, 2), "kps_latent": torch.zeros(1, 1, 16, 2, 2)},
            torch.zeros(1, 1, 16, 2, 2),
        )


def test_cross_attention_modules_follow_the_block_selection():
    injector = LocalFaceCrossAttention(INFO, site="post_attn", blocks={"every": 2}, extractor=LFE_SIZES)
    assert injector.block_indices == [0, 2]
    assert len(injector.perceiver_cross_attention) == 2


def test_scale_multiplies_the_residual():
    injector = LocalFaceCrossAttention(INFO, scale=1.0, extractor=LFE_SIZES).eval()
    id_cond, vit = identity_inputs()
    tokens = injector.prepare({"id_cond": id_cond, "id_vit_hidden": vit}, BatchRandom(torch.Generator()))
    video = torch.randn(2, 10, 32)
    one = injector(0, video, tokens)
    injector.scale = 2.5
    torch.testing.assert_close(injector(0, video, tokens), 2.5 * one)


def test_registered_through_the_entry_point_with_its_distribution_as_source():
    injectors = {e.name: e for e in REGISTRIES[PluginKind.INJECTOR].entries()}
    assert injectors["consisid.global_face_latent"].obj is GlobalFaceLatent
    assert injectors["consisid.local_face_cross_attention"].source.startswith("idvid-consisid")
