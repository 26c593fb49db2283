"""The backbone worked example in CONTRIBUTING.md is real code: register it, configure it, train with it."""

from __future__ import annotations

import copy
import re

import hydra
import lightning as L
import pytest
import torch

from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind

from ..conftest import REPO, compose_config
from ..core.test_training import demo_batch  # noqa: F401  (a fixture)

CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()
SECTION = CONTRIBUTING.split("## Writing a backbone", 1)[1]


def _block(language: str) -> str:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.S)[0]


@pytest.fixture
def example(tmp_path):
    """The example registered and its config folder on the search path; unregistered afterwards."""
    backbones = REGISTRIES[PluginKind.BACKBONE]
    backbones.get("wan")  # built-ins loaded before the example registers
    namespace: dict = {}
    exec(compile(_block("python"), "CONTRIBUTING.md", "exec"), namespace)
    (tmp_path / "backbone").mkdir()
    (tmp_path / "backbone" / "wan_logit_normal.yaml").write_text(_block("yaml"))
    try:
        yield namespace["WanLogitNormal"], f"hydra.searchpath=[file://{tmp_path}]"
    finally:
        backbones._entries.pop("my_lab.wan_logit_normal", None)


@pytest.mark.needs_plugin("idvid_consisid")
def test_example_backbone_draws_logit_normal_noise_levels_and_trains(example, demo_batch):  # noqa: F811
    cls, searchpath = example
    cfg = compose_config([searchpath, "experiment=plan_c", "backbone=wan_logit_normal", "recipe=none"])
    assert cfg.backbone.name == "my_lab.wan_logit_normal"
    L.seed_everything(0)
    model = hydra.utils.instantiate(cfg.model)
    backbone = model.backbone
    assert type(backbone) is cls

    clean = torch.randn(4096, 1, 16, 1, 1)
    noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)))
    logits = torch.logit(noised.timesteps / 1000)
    assert abs(logits.mean().item()) < 0.05 and abs(logits.std().item() - 1.0) < 0.05  # N(0, 1), not Wan's shift
    fixed = backbone.add_training_noise(clean[:2], BatchRandom(torch.Generator().manual_seed(0)), t_fraction=0.3)
    torch.testing.assert_close(fixed.timesteps, torch.full((2,), 300.0))

    # Everything else is Wan's: the same transformer gives the same prediction, and the recipe trains.
    wan = copy.deepcopy(backbone)
    wan.__class__ = REGISTRIES[PluginKind.BACKBONE].get("wan")
    latents = torch.randn(1, 3, 32, 8, 8)
    text = backbone.encode_text(["a person"])
    timestep = torch.tensor([400.0])
    with torch.no_grad():
        torch.testing.assert_close(backbone(latents, timestep, text), wan(latents, timestep, text))
    model.train()
    loss = model.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and backbone.transformer.proj_out.weight.grad.abs().sum() > 0


def test_example_backbone_refuses_two_experts(example):
    _, searchpath = example
    with pytest.raises(Exception, match="trains one-expert Wan models"):
        hydra.utils.instantiate(
            compose_config(
                [searchpath, "backbone=wan_logit_normal", "backbone.boundary_ratio=0.5", "backbone.expert=high_noise"]
            ).model
        )
