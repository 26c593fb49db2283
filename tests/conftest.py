"""Shared fixtures: tiny models composed from the real Hydra configs, and test-only injectors."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from idvid import config_packages

REPO = Path(__file__).resolve().parents[1]
# Every experiment of the installed config packages (the kit's and the plugins').
EXPERIMENTS = sorted(
    {name for package in config_packages.all_config_packages() for name in package.groups().get("experiment", [])}
)
PLANS = [e for e in EXPERIMENTS if e.startswith("plan_")]
# The tests train at the tiny scale (every code path in seconds): `fit`'s default is scale=toy, which builds
# the toy face set and trains for minutes. Every fit a test composes or runs names it.
TINY_SCALE = "scale=tiny"


def pytest_configure(config):
    """Under ``pytest -n N`` the controller builds the demo data set once, before any worker starts, and
    every worker computes on one thread.

    Workers would otherwise each build the demo at the same time into the same cache folder (the same work
    done twice, the last rename winning). And N workers of torch's default thread count (one per core),
    plus the processes some tests start, would oversubscribe the cores: threads that wait on each other
    run several times slower than one thread each. The environment variable reaches those processes too.
    """
    if not getattr(config.option, "numprocesses", None):
        return
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    else:
        from idvid.demo import build_demo

        build_demo()


@pytest.fixture(autouse=True)
def no_stale_log_handlers():
    """Drop root log handlers bound to a stream that pytest has closed since.

    A verb run in-process through Hydra configures logging onto the capture stream of the test that ran
    it; a later test in the same process would otherwise print "--- Logging error ---" tracebacks.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)
    yield


def pytest_collection_modifyitems(config, items):
    """Skip the tests that exercise the kit through a first-party plugin when that plugin is not installed.

    The core must work without any method installed; its own tests then still run, and these are reported
    as skipped with the plugin's name instead of failing.
    """
    for item in items:
        for marker in item.iter_markers("needs_plugin"):
            module = marker.args[0]
            if importlib.util.find_spec(module) is None:
                item.add_marker(pytest.mark.skip(reason=f"the plugin {module} is not installed"))


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """Compose the real config tree at the tiny scale (a test may name another; the fit default is toy);
    with ``run_dir``, also make ``${hydra:...}`` resolvable."""
    overrides = [TINY_SCALE, *overrides]
    cfg = config_packages.compose("config", overrides, return_hydra_config=run_dir is not None)
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
