"""Each recipe knob changes what it should and nothing else."""

from __future__ import annotations

import pytest
import torch

from idvid.randomness import BatchRandom
from idvid.training.recipe import Recipe

OFF = dict(
    cross_face_probability=0.0,
    reference_noise_log_sigma=None,
    mask_loss_probability=0.0,
    image_latent_dropout=0.0,
    text_drop_probability=0.0,
)


def fake_batch(batch_size: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {}
    for key, shape in {"ref_image": (3, 8, 8), "ref_kps_image": (3, 8, 8), "ref_embedding": (5,)}.items():
        batch[key] = torch.rand(batch_size, *shape, generator=g)
        batch[f"cross_{key}"] = torch.rand(batch_size, *shape, generator=g) + 2.0  # distinguishable
    batch["has_cross_ref"] = torch.ones(batch_size, dtype=torch.bool)
    return batch


def gen(seed: int = 0) -> BatchRandom:
    return BatchRandom(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("probability, expect_cross", [(0.0, False), (1.0, True)])
def test_cross_face_probability_picks_the_reference_source(probability, expect_cross):
    batch = fake_batch()
    out = Recipe(**{**OFF, "cross_face_probability": probability}).choose_reference(batch, gen())
    for key in ("ref_image", "ref_kps_image", "ref_embedding"):
        source = batch[f"cross_{key}"] if expect_cross else batch[key]
        assert torch.equal(out[key], source)
    assert "ref_image_noisy" not in out


def test_cross_face_is_not_used_where_the_clip_has_none():
    batch = fake_batch()
    batch["has_cross_ref"] = torch.tensor([True, False, True, False])
    out = Recipe(**{**OFF, "cross_face_probability": 1.0}).choose_reference(batch, gen())
    assert out["used_cross_ref"].tolist() == [True, False, True, False]
    assert torch.equal(out["ref_image"][1], batch["ref_image"][1])
    assert torch.equal(out["ref_image"][0], batch["cross_ref_image"][0])


def test_cross_face_at_half_mixes_per_sample():
    out = Recipe(**{**OFF, "cross_face_probability": 0.5}).choose_reference(fake_batch(64), gen())
    share = out["used_cross_ref"].float().mean().item()
    assert 0.3 < share < 0.7


def test_reference_noise_has_log_normal_sigma_and_touches_only_the_vae_copy():
    batch = fake_batch(256)
    out = Recipe(**{**OFF, "reference_noise_log_sigma": [-3.0, 0.5]}).choose_reference(batch, gen())
    assert torch.equal(out["ref_image"], batch["ref_image"])  # identity features see the clean image
    noise = out["ref_image_noisy"] - out["ref_image"]
    log_sigma = noise.flatten(1).std(dim=1).log()
    assert abs(log_sigma.mean().item() - (-3.0)) < 0.1
    assert abs(log_sigma.std().item() - 0.5) < 0.1


def test_text_drop():
    captions = ["a", "b", "c", "d"]
    assert Recipe(**{**OFF, "text_drop_probability": 1.0}).drop_text(captions, gen()) == [""] * 4
    assert Recipe(**OFF).drop_text(captions, gen()) == captions


def test_image_latent_dropout_zeroes_whole_samples():
    latents = torch.rand(4, 3, 16, 2, 2) + 1
    assert Recipe(**{**OFF, "image_latent_dropout": 1.0}).drop_image_latents(latents, gen()).abs().sum() == 0
    assert torch.equal(Recipe(**OFF).drop_image_latents(latents, gen()), latents)
    half = Recipe(**{**OFF, "image_latent_dropout": 0.5}).drop_image_latents(torch.ones(64, 1, 1, 1, 1), gen())
    assert set(half.flatten().tolist()) == {0.0, 1.0}


def test_mask_loss_uses_the_resized_face_mask_or_ones():
    face = torch.zeros(2, 9, 1, 16, 16)
    face[:, :, :, 4:12, 4:12] = 1
    shape = torch.Size((2, 3, 16, 4, 4))
    on = Recipe(**{**OFF, "mask_loss_probability": 1.0}).loss_mask(face, shape, gen())
    assert on.shape == (2, 3, 1, 4, 4)
    assert on[:, :, :, 1:3, 1:3].min() == 1 and on[:, :, :, 0, 0].max() == 0
    assert torch.equal(Recipe(**OFF).loss_mask(face, shape, gen()), torch.ones(2, 3, 1, 4, 4))
    empty = Recipe(**{**OFF, "mask_loss_probability": 1.0}).loss_mask(torch.zeros_like(face), shape, gen())
    assert torch.equal(empty, torch.ones(2, 3, 1, 4, 4))  # no face: keep the full-frame loss


def test_switching_one_knob_does_not_shift_the_others():
    """Every coin is drawn whatever its probability, so knobs are independent."""
    batch = fake_batch(16)
    base = {**OFF, "cross_face_probability": 0.5, "reference_noise_log_sigma": [-3.0, 0.5]}
    a, b = Recipe(**base), Recipe(**{**base, "text_drop_probability": 1.0})
    for recipe_a, recipe_b in [(a, b)]:
        ga, gb = gen(5), gen(5)
        out_a, out_b = recipe_a.choose_reference(batch, ga), recipe_b.choose_reference(batch, gb)
        assert torch.equal(out_a["ref_image_noisy"], out_b["ref_image_noisy"])
        assert recipe_a.drop_text(["x"] * 16, ga) != recipe_b.drop_text(["x"] * 16, gb)
        face = torch.ones(16, 9, 1, 8, 8)
        assert torch.equal(
            recipe_a.loss_mask(face, torch.Size((16, 3, 16, 2, 2)), ga),
            recipe_b.loss_mask(face, torch.Size((16, 3, 16, 2, 2)), gb),
        )


@pytest.mark.parametrize("bad", [{"mask_loss_probability": 1.5}, {"reference_noise_log_sigma": [1.0]}])
def test_bad_recipe_values_are_clear_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Recipe(**{**OFF, **bad})
