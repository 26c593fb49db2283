"""Shared fixtures: tiny models composed from the real Hydra configs, and test-only injectors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from idvid.cli import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR.parent / "experiments").glob("*.yaml"))
PLANS = [e for e in EXPERIMENTS if e.startswith("plan_")]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """Compose the real config tree; with ``run_dir``, also make ``${hydra:...}`` resolvable."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=run_dir is not None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture
def compose_cfg():
    return compose_config


def tiny_backbone_config() -> dict:
    cfg = compose_config([])
    config = OmegaConf.to_container(cfg.backbone, resolve=True)
    config.pop("name")  # the registry name; the rest are CogVideoXBackbone's arguments
    return config


@pytest.fixture(scope="session")
def backbone_config() -> dict:
    return tiny_backbone_config()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
