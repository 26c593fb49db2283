"""ConsisID's recipe steps: each changes what it should and nothing else, and draws only through BatchRandom."""

from __future__ import annotations

import pytest
import torch
from idvid_consisid import LocalFaceCrossAttention
from idvid_consisid.recipe import CoarseToFine, CrossFaceReference, DropToken, DynamicMaskLoss, ReferenceNoise
from test_consisid_plugin import INFO, LFE_SIZES, identity_inputs

from idvid.errors import ConfigError
from idvid.injection import InjectionPlan
from idvid.randomness import BatchRandom
from idvid.training.recipe import ImageLatentDropout, Recipe, TextDrop
from tests.conftest import compose_config


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


def consisid_recipe(**probabilities) -> Recipe:
    """ConsisID's recipe (conf/recipe/consisid.yaml) with some probabilities changed."""
    p = {"cross_face": 0.5, "text_drop": 0.1, "image_latent_dropout": 0.05, "dynamic_mask_loss": 0.5, **probabilities}
    return Recipe(
        {
            "cross_face": CrossFaceReference(p["cross_face"]),
            "reference_noise": ReferenceNoise([-3.0, 0.5]),
            "text_drop": TextDrop(p["text_drop"]),
            "image_latent_dropout": ImageLatentDropout(p["image_latent_dropout"]),
            "dynamic_mask_loss": DynamicMaskLoss(p["dynamic_mask_loss"]),
        }
    )


@pytest.mark.parametrize("probability, expect_cross", [(0.0, False), (1.0, True)])
def test_cross_face_probability_picks_the_reference_source(probability, expect_cross):
    batch = fake_batch()
    out = CrossFaceReference(probability).on_batch(dict(batch), gen())
    for key in ("ref_image", "ref_kps_image", "ref_embedding"):
        source = batch[f"cross_{key}"] if expect_cross else batch[key]
        assert torch.equal(out[key], source)
    assert "ref_image_noisy" not in out


def test_cross_face_is_not_used_where_the_clip_has_none():
    batch = fake_batch()
    batch["has_cross_ref"] = torch.tensor([True, False, True, False])
    out = CrossFaceReference(1.0).on_batch(dict(batch), gen())
    assert out["used_cross_ref"].tolist() == [True, False, True, False]
    assert torch.equal(out["ref_image"][1], batch["ref_image"][1])
    assert torch.equal(out["ref_image"][0], batch["cross_ref_image"][0])


def test_cross_face_at_half_mixes_per_sample():
    out = CrossFaceReference(0.5).on_batch(fake_batch(64), gen())
    share = out["used_cross_ref"].float().mean().item()
    assert 0.3 < share < 0.7


def test_reference_noise_has_log_normal_sigma_and_touches_only_the_vae_copy():
    batch = fake_batch(256)
    out = ReferenceNoise([-3.0, 0.5]).on_batch(dict(batch), gen())
    assert torch.equal(out["ref_image"], batch["ref_image"])  # identity features see the clean image
    noise = out["ref_image_noisy"] - out["ref_image"]
    log_sigma = noise.flatten(1).std(dim=1).log()
    assert abs(log_sigma.mean().item() - (-3.0)) < 0.1
    assert abs(log_sigma.std().item() - 0.5) < 0.1


def test_mask_loss_uses_the_resized_face_mask_or_ones():
    face = torch.zeros(2, 9, 1, 16, 16)
    face[:, :, :, 4:12, 4:12] = 1
    shape = torch.Size((2, 3, 16, 4, 4))
    on = Recipe({"dml": DynamicMaskLoss(1.0)}).loss_mask({"face_mask": face}, shape, gen())
    assert on.shape == (2, 3, 1, 4, 4)
    assert on[:, :, :, 1:3, 1:3].min() == 1 and on[:, :, :, 0, 0].max() == 0
    off = Recipe({"dml": DynamicMaskLoss(0.0)}).loss_mask({"face_mask": face}, shape, gen())
    assert torch.equal(off, torch.ones(2, 3, 1, 4, 4))
    empty = Recipe({"dml": DynamicMaskLoss(1.0)}).loss_mask({"face_mask": torch.zeros_like(face)}, shape, gen())
    assert torch.equal(empty, torch.ones(2, 3, 1, 4, 4))  # no face: keep the full-frame loss
    assert torch.equal(Recipe({"dml": DynamicMaskLoss(1.0)}).loss_mask({}, shape, gen()), torch.ones(2, 3, 1, 4, 4))


def test_switching_one_knob_does_not_shift_the_others():
    """Every coin is drawn whatever its probability, so knobs are independent."""
    batch = fake_batch(16)
    a, b = consisid_recipe(), consisid_recipe(text_drop=1.0)
    ga, gb = gen(5), gen(5)
    out_a, out_b = a.on_batch(batch, ga), b.on_batch(batch, gb)
    assert torch.equal(out_a["ref_image_noisy"], out_b["ref_image_noisy"])
    assert a.on_captions(["x"] * 16, ga) != b.on_captions(["x"] * 16, gb)
    face = {"face_mask": torch.ones(16, 9, 1, 8, 8)}
    shape = torch.Size((16, 3, 16, 2, 2))
    assert torch.equal(a.loss_mask(face, shape, ga), b.loss_mask(face, shape, gb))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DynamicMaskLoss(1.5), "probability=1.5"),
        (lambda: CrossFaceReference(-0.1), "probability=-0.1"),
        (lambda: ReferenceNoise([1.0]), r"log_sigma=\[1.0\]"),
        (lambda: DropToken(1.0), "probability=1.0"),
        (lambda: CoarseToFine(-1), "in_block_start_step=-1"),
    ],
)
def test_bad_step_values_are_clear_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


# ------------------------------------------------------------------------------------------ DropToken
def prepared_tokens(injector, random: BatchRandom, batch_size: int = 2) -> torch.Tensor:
    id_cond, vit = identity_inputs(batch=batch_size)
    plan = InjectionPlan({"identity": injector})
    recipe = Recipe({"drop_token": DropToken(0.5)})
    conditions = {"id_cond": id_cond, "id_vit_hidden": vit}
    prepared = plan.prepare(conditions, random, lambda inj, state: recipe.on_injector_state(inj, state, random))
    ((_, tokens),) = prepared._by_site_block[(injector.site, injector.block_indices[0])]
    return tokens


def test_drop_token_drops_identity_tokens_in_training_only():
    injector = LocalFaceCrossAttention(INFO, extractor=LFE_SIZES)
    injector.eval()
    assert prepared_tokens(injector, gen()).shape[1] == 6
    injector.train()
    kept = {prepared_tokens(injector, gen(seed)).shape[1] for seed in range(20)}
    assert max(kept) <= 6 and min(kept) >= 1 and min(kept) < 6


def test_drop_token_draws_through_batch_random_only():
    """Same generator state, same tokens (exact resume), whatever torch's global RNG holds."""
    injector = LocalFaceCrossAttention(INFO, extractor=LFE_SIZES).train()
    torch.manual_seed(1)
    first = prepared_tokens(injector, gen(3))
    torch.manual_seed(2)
    again = prepared_tokens(injector, gen(3))
    assert torch.equal(first, again)


def test_drop_token_drops_the_same_tokens_on_every_rank_as_one_process():
    injector = LocalFaceCrossAttention(INFO, extractor=LFE_SIZES).train()
    single = prepared_tokens(injector, gen(4), batch_size=2)
    ranks = [
        prepared_tokens(injector, BatchRandom(torch.Generator().manual_seed(4), rank=r, world_size=2), batch_size=2)
        for r in (0, 1)
    ]
    assert single.shape[1] < 6  # (seed 4 drops some tokens)
    assert all(torch.equal(single, tokens) for tokens in ranks)


def test_drop_token_leaves_other_injectors_alone():
    state = torch.ones(2, 6, 4)
    assert DropToken(0.5).on_injector_state(object(), state, gen()) is state


# ------------------------------------------------------------------------------------- coarse-to-fine
def test_coarse_to_fine_switches_the_in_block_path_at_its_step():
    plan = InjectionPlan({})
    step = CoarseToFine(in_block_start_step=2)
    logged = [step.at_step(plan, s) | {"enabled": plan.in_block_enabled} for s in range(4)]
    assert [entry["in_block_enabled"] for entry in logged] == [0.0, 0.0, 1.0, 1.0]
    assert [entry["enabled"] for entry in logged] == [False, False, True, True]


# ----------------------------------------------------------------------------------- the composed recipe
def test_the_plans_compose_consisids_recipe_in_order():
    from idvid.training.recipe import Recipe as KitRecipe

    cfg = compose_config(["experiment=plan_c"])
    recipe = KitRecipe.from_config(cfg.model.recipe)
    assert [type(step) for step in recipe] == [
        CrossFaceReference,
        ReferenceNoise,
        TextDrop,
        ImageLatentDropout,
        DynamicMaskLoss,
        CoarseToFine,
    ]
    steps = recipe.steps
    assert steps["cross_face"].probability == 0.5 and steps["dynamic_mask_loss"].probability == 0.5
    assert (steps["reference_noise"].mean, steps["reference_noise"].std) == (-3.0, 0.5)
    assert steps["text_drop"].probability == 0.1 and steps["image_latent_dropout"].probability == 0.05
    off = KitRecipe.from_config(compose_config(["experiment=plan_c", "recipe.cross_face=null"]).model.recipe)
    assert "cross_face" not in off.steps
    added = compose_config(["experiment=plan_c", "+recipe.drop_token={name: consisid.drop_token, probability: 0.1}"])
    assert isinstance(KitRecipe.from_config(added.model.recipe).steps["drop_token"], DropToken)


@pytest.mark.slow
def test_coarse_to_fine_switches_at_its_step_in_a_fit(tmp_path):
    from tests.core.test_training import run_fit, scalars

    run_fit(
        tmp_path,
        "experiment=plan_c",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "recipe.coarse_to_fine.in_block_start_step=2",
    )
    _, enabled = scalars(tmp_path, "train/in_block_enabled")
    assert enabled == [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)]


@pytest.mark.slow
def test_resume_is_exact_with_drop_token_and_a_coarse_stage(tmp_path):
    """Every ConsisID step on, DropToken included, the fine stage starting after the resume point."""
    import math

    from tests.core.test_training import run_fit, scalars

    common = [
        "experiment=plan_c",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "callbacks.checkpoint.every_n_train_steps=2",
        "+recipe.drop_token={name: consisid.drop_token, probability: 0.5}",
        "recipe.coarse_to_fine.in_block_start_step=3",
    ]
    run_fit(tmp_path / "full", *common)
    run_fit(tmp_path / "resumed", *common, f"ckpt_path={tmp_path / 'full' / 'checkpoints' / 'step000002.ckpt'}")
    _, full = scalars(tmp_path / "full", "train/loss")
    _, resumed = scalars(tmp_path / "resumed", "train/loss")
    assert [s for s, _ in resumed] == [2, 3] and all(math.isfinite(v) for _, v in full)
    assert resumed == full[2:]
    _, enabled = scalars(tmp_path / "resumed", "train/in_block_enabled")
    assert enabled == [(2, 0.0), (3, 1.0)]
