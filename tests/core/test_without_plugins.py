"""The core alone: with the first-party plugins uninstalled, the kit lists, trains and explains what is missing.

The plugins (ConsisID, Magic-Me, Lynx, MegActor-Σ) are hidden from a child process as an uninstall would leave them:
their distributions' entry points are gone and their modules cannot be imported. A ``sitecustomize``
on the child's path does both, so the test needs no second environment: it drops the editable
installs' import finders and the distributions' entry points (``test_the_plugin_is_really_hidden``
checks that this worked).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: every plugin package under plugins/ (its package is idvid_<name>, its distribution idvid-<name>)
FIRST_PARTY_PLUGINS = tuple(
    sorted(p.name for p in (Path(__file__).parents[2] / "plugins").iterdir() if (p / "pyproject.toml").is_file())
)

HIDE = """
import importlib.metadata, sys

FIRST_PARTY_PLUGINS = {plugins!r}

HIDDEN_MODULES = tuple(f"idvid_{name}" for name in FIRST_PARTY_PLUGINS)
HIDDEN_DISTS = tuple(f"idvid-{name}" for name in FIRST_PARTY_PLUGINS)

# An editable install imports through a finder of its own on sys.meta_path (site.py has put it there
# before it runs sitecustomize); without it the module is not importable.
sys.meta_path[:] = [
    f for f in sys.meta_path if not any(m in getattr(f, "__module__", "") for m in HIDDEN_MODULES)
]
_entry_points = importlib.metadata.entry_points


def entry_points(**params):
    found = _entry_points(**params)
    if not isinstance(found, importlib.metadata.EntryPoints):  # the no-argument form (groups by name)
        return found
    kept = [e for e in found if e.dist is None or e.dist.name.replace("_", "-") not in HIDDEN_DISTS]
    return importlib.metadata.EntryPoints(kept)


importlib.metadata.entry_points = entry_points
"""


@pytest.fixture(scope="module")
def core_only_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hide_consisid")
    (folder / "sitecustomize.py").write_text(HIDE.replace("{plugins!r}", repr(FIRST_PARTY_PLUGINS)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idvid", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_plugin_is_really_hidden(core_only_env, tmp_path):
    probe = "import importlib.util, importlib.metadata as m"
    modules = tuple(f"idvid_{name}" for name in FIRST_PARTY_PLUGINS)
    probe += f"; print([importlib.util.find_spec(n) for n in {modules!r}])"
    probe += "; print(sorted(e.name for e in m.entry_points(group='idvid.plugins')))"
    result = subprocess.run([sys.executable, "-c", probe], env=core_only_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str([None] * len(modules)), "['idvid']"]


def test_plugins_lists_the_core_alone(core_only_env, tmp_path):
    result = run(["plugins"], core_only_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "reference_latents" in result.stdout and "input_concat" in result.stdout
    # Each backbone adapter says where the sites are in its block.
    assert "Sites in each backbone" in result.stdout and "text cross-attention's residual" in result.stdout
    for plugin in FIRST_PARTY_PLUGINS:  # no plugin, no config package
        assert f"{plugin}." not in result.stdout and f"idvid_{plugin}" not in result.stdout


def test_a_consisid_plan_names_the_missing_plugin(core_only_env, tmp_path):
    result = run(["fit", "experiment=plan_c"], core_only_env, tmp_path)
    assert result.returncode != 0
    assert "experiment=plan_c" in result.stderr and "pip install -e" in result.stderr, result.stderr
    assert "plugins/consisid" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_core_only_experiment_trains(core_only_env, tmp_path):
    result = run(
        [
            "fit",
            "experiment=baseline",
            "scale=tiny",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            "model.validation.sample=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        core_only_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
