"""The recipe: registered steps in config order, each hook at its point of a training step.

(ConsisID's steps are tested with the plugin: plugins/consisid/tests/test_consisid_recipe.py.)
"""

from __future__ import annotations

import uuid

import hydra
import lightning as L
import pytest
import torch

from idvid.errors import ConfigError, ConfigKeyError
from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind, register_recipe_step
from idvid.training.recipe import CrossReference, ImageLatentDropout, Recipe, RecipeStep, TextDrop

from ..conftest import compose_config


def gen(seed: int = 0) -> BatchRandom:
    return BatchRandom(torch.Generator().manual_seed(seed))


def test_cross_reference_swaps_every_reference_key_where_the_clip_has_a_cross_reference():
    batch = {
        "ref_image": torch.zeros(3, 3, 2, 2),
        "cross_ref_image": torch.ones(3, 3, 2, 2),
        "ref_kps": torch.zeros(3, 5, 2),
        "cross_ref_kps": torch.ones(3, 5, 2),
        "has_cross_ref": torch.tensor([True, False, True]),
    }
    out = CrossReference(1.0).on_batch(dict(batch), gen())
    assert out["used_cross_ref"].tolist() == [True, False, True]
    assert out["ref_image"].flatten(1).mean(1).tolist() == [1.0, 0.0, 1.0]
    assert out["ref_kps"].flatten(1).mean(1).tolist() == [1.0, 0.0, 1.0]
    assert not CrossReference(0.0).on_batch(dict(batch), gen())["used_cross_ref"].any()
    with pytest.raises(ConfigError, match="cross_reference: probability=2"):
        CrossReference(2.0)


def test_text_drop():
    captions = ["a", "b", "c", "d"]
    assert TextDrop(1.0).on_captions(captions, gen()) == [""] * 4
    assert TextDrop(0.0).on_captions(captions, gen()) == captions


def test_image_latent_dropout_zeroes_whole_samples():
    latents = torch.rand(4, 3, 16, 2, 2) + 1
    assert ImageLatentDropout(1.0).on_input_latents(latents, gen()).abs().sum() == 0
    assert torch.equal(ImageLatentDropout(0.0).on_input_latents(latents, gen()), latents)
    half = ImageLatentDropout(0.5).on_input_latents(torch.ones(64, 1, 1, 1, 1), gen())
    assert set(half.flatten().tolist()) == {0.0, 1.0}


def test_a_step_draws_whatever_its_probability():
    """A coin of probability 0 is still tossed: switching a step's knob never shifts later draws."""
    a, b = gen(3), gen(3)
    TextDrop(0.0).on_captions(["x"] * 4, a)
    TextDrop(1.0).on_captions(["x"] * 4, b)
    assert torch.equal(a.rand(2), b.rand(2))


@pytest.mark.parametrize(
    "bad", [{"name": "text_drop", "probability": 1.5}, {"name": "image_latent_dropout", "probability": -1}]
)
def test_bad_step_values_are_clear_errors(bad):
    with pytest.raises(ConfigError, match=f"probability={bad['probability']}"):
        Recipe.from_config({"step": bad})


def test_an_empty_recipe_changes_nothing():
    recipe = Recipe.from_config({})
    batch = {"ref_image": torch.ones(2, 3, 4, 4), "caption": ["a", "b"]}
    assert recipe.on_batch(batch, gen()) == batch and recipe.on_captions(["a"], gen()) == ["a"]
    assert torch.equal(recipe.loss_mask(batch, torch.Size((2, 3, 16, 2, 2)), gen()), torch.ones(2, 3, 1, 2, 2))
    assert recipe.at_step(None, 5) == {}


def test_the_core_default_recipe_is_empty():
    assert dict(compose_config([]).model.recipe) == {}
    assert dict(compose_config(["experiment=baseline"]).model.recipe) == {}


def test_steps_run_in_config_order_and_null_switches_one_off():
    recipe = Recipe.from_config(
        {"drop": {"name": "text_drop", "probability": 1.0}, "off": None, "dropout": {"name": "image_latent_dropout"}}
    )
    assert list(recipe.steps) == ["drop", "dropout"]
    assert [type(s) for s in recipe] == [TextDrop, ImageLatentDropout]


def test_the_old_flat_recipe_keys_are_refused_naming_the_new_form():
    with pytest.raises(ConfigError, match=r"recipe.text_drop_probability=0.1 is not a recipe step node") as error:
        Recipe.from_config({"text_drop_probability": 0.1})
    assert "recipe.<label>.<option>=..." in str(error.value)


def test_an_unknown_option_names_the_steps_parameters():
    with pytest.raises(ConfigKeyError, match="Its parameters are: probability"):
        Recipe.from_config({"drop": {"name": "text_drop", "probabilty": 0.1}})


@pytest.fixture
def recording_step():
    """A third-party step that records each hook it sees (in order) and acts at each."""
    name = f"test_lab.recording_{uuid.uuid4().hex[:8]}"
    calls: list[str] = []

    @register_recipe_step(name)
    class Recording(RecipeStep):
        def __init__(self, gain: float = 2.0):
            self.gain = gain

        def on_batch(self, batch, random):
            calls.append("on_batch")
            batch["recorded"] = random.rand(batch["video"].shape[0])
            return batch

        def on_captions(self, captions, random):
            calls.append("on_captions")
            return [c + " (seen)" for c in captions]

        def on_loss_mask(self, mask, batch, random):
            calls.append("on_loss_mask")
            assert "recorded" in batch  # the batch the step changed reaches the loss
            return mask * self.gain

        def at_step(self, plan, global_step):
            calls.append("at_step")
            return {"recording_step": float(global_step)}

    yield name, calls
    REGISTRIES[PluginKind.RECIPE_STEP]._entries.pop(name, None)


def test_a_registered_step_is_composed_from_config_and_called_at_its_points(recording_step, tmp_path):
    name, calls = recording_step
    cfg = compose_config(["experiment=baseline", f"+recipe.mine={{name: {name}, gain: 3.0}}"])
    L.seed_everything(0)
    model = hydra.utils.instantiate(cfg.model)
    assert model.recipe.steps["mine"].gain == 3.0
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    seen_captions = []
    model.backbone.encode_text = lambda captions, _orig=model.backbone.encode_text: (
        seen_captions.extend(captions) or _orig(captions)
    )
    model.compute_loss(batch, gen())
    assert calls == ["on_batch", "on_captions", "on_loss_mask"]
    assert seen_captions and all(c.endswith(" (seen)") for c in seen_captions)
    assert model._apply_recipe_schedule() == {"recording_step": 0.0}
