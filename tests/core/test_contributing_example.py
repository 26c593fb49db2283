"""The worked example in CONTRIBUTING.md is a real plugin package: build it, install it, train with it.

Every code block of the guide whose first line is ``# file: PATH`` is written to a folder as that
file; pip installs the folder (a regular install into a target folder, so the test environment is
left as it was) and the package is then used as a third party would use it: the kit finds its
plugins and its experiment through the entry points, with no extra flag.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch

from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind, load_plugins

from ..conftest import REPO, TINY_SCALE, compose_config

CONTRIBUTING = (REPO / "CONTRIBUTING.md").read_text()
SECTION = CONTRIBUTING.split("## Worked example: a plugin package", 1)[1].split("\n## ", 1)[0]
EXAMPLE_NAMES = {
    PluginKind.CONDITIONER: "my_lab.face_geometry",
    PluginKind.INJECTOR: "my_lab.identity_tokens",
    PluginKind.RECIPE_STEP: "my_lab.grey_reference",
    PluginKind.NOISE_PRIOR: "my_lab.offset_noise",
}


def example_files() -> dict[str, str]:
    """{path: text} of the blocks that start with ``# file: PATH``."""
    files = {}
    for block in re.findall(r"```\w*\n(.*?)```", SECTION, flags=re.S):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# file: (\S+)", first.strip())
        if match:
            files[match.group(1)] = rest
    return files


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The package built from the guide and pip-installed into a folder; that folder is on sys.path meanwhile."""
    root = tmp_path_factory.mktemp("contributing")
    source, site = root / "my-idvid-plugin", root / "site"
    for path, text in example_files().items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run([*command, "--target", str(site), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    load_plugins()  # the installed plugins first: the example registers on top of them
    sys.path.insert(0, str(site))
    try:
        import my_idvid_plugin  # noqa: F401  (what the entry point does in a fresh process)

        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.split(".")[0] == "my_idvid_plugin"]:
            del sys.modules[name]
        for kind, name in EXAMPLE_NAMES.items():
            REGISTRIES[kind]._entries.pop(name, None)


def run_kit(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "idvid", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_guide_holds_the_whole_package():
    assert {
        "pyproject.toml",
        "my_idvid_plugin/__init__.py",
        "my_idvid_plugin/conf/__init__.py",
        "my_idvid_plugin/conf/experiment/my_identity_tokens.yaml",
    } <= set(example_files())


def test_the_example_experiment_composes_from_its_installed_config_package(installed_example):
    cfg = compose_config(["experiment=my_identity_tokens"])  # no search-path flag: the entry point finds it
    assert cfg.experiment_name == "my_identity_tokens"
    assert list(cfg.recipe) == ["grey", "text_drop"] and cfg.conditioners.geometry.name == "my_lab.face_geometry"


def test_the_example_trains_and_its_injector_starts_as_a_no_op(installed_example):
    cfg = compose_config(["experiment=my_identity_tokens"])
    L.seed_everything(0)
    model = hydra.utils.instantiate(cfg.model)
    injector = model.plan.injectors["identity"]
    assert type(injector).__name__ == "IdentityTokens" and injector.block_indices == [1, 3]
    assert list(model.recipe.steps) == ["grey", "text_drop"]

    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    geometry = model.conditions_for(batch, BatchRandom(torch.Generator().manual_seed(0)))["face_geometry"]
    assert geometry.shape == (batch["ref_kps"].shape[0], 10) and geometry.abs().max() <= 1

    loss = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    # Zero-initialised output: the same loss as with the in-block path bypassed.
    model.plan.in_block_enabled = False
    bypassed = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    model.plan.in_block_enabled = True
    torch.testing.assert_close(loss, bypassed, rtol=0, atol=0)
    loss.backward()
    assert all(out.weight.grad is not None and out.weight.grad.abs().sum() > 0 for out in injector.to_out)

    # The recipe step greys the reference, and the same generator state draws the same coins.
    from my_idvid_plugin.grey_reference import GreyReference

    grey = GreyReference(probability=1.0).on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(0)))
    image = grey["ref_image"]
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    assert not torch.equal(batch["ref_image"][:, 0], batch["ref_image"][:, 1])
    half = GreyReference(probability=0.5)
    first, again = (half.on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(3))) for _ in range(2))
    assert torch.equal(first["ref_image"], again["ref_image"])


def test_the_example_noise_prior_is_what_sampling_starts_from(installed_example):
    from my_idvid_plugin.offset_noise import OffsetNoise

    prior = OffsetNoise(strength=0.5)
    shape = (2, 3, 4, 8, 8)
    noise = prior(shape, generator=torch.Generator().manual_seed(0))
    assert noise.shape == shape and torch.equal(noise, prior(shape, generator=torch.Generator().manual_seed(0)))

    L.seed_everything(0)
    model = hydra.utils.instantiate(compose_config(["experiment=baseline"]).model).eval()
    batch = {"caption": ["a person"]}
    offset = model.generate(batch, 9, 32, 32, 2, seed=0, noise_prior={"name": "my_lab.offset_noise", "strength": 0.1})
    plain = model.generate(batch, 9, 32, 32, 2, seed=0)
    assert offset.shape == plain.shape and not torch.equal(offset, plain)


@pytest.mark.slow
def test_a_fresh_process_finds_the_package_and_fits_its_experiment(installed_example, tmp_path):
    listed = run_kit(["plugins"], installed_example, tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in EXAMPLE_NAMES.values():
        assert name in listed.stdout, name
    assert "my_idvid_plugin.conf" in listed.stdout

    run_dir = tmp_path / "run"
    fit = run_kit(
        ["fit", "experiment=my_identity_tokens", TINY_SCALE, "trainer.max_steps=2", "trainer.val_check_interval=2",
         "trainer.limit_val_batches=1", f"hydra.run.dir={run_dir}"],
        installed_example,
        tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-4000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any(run_dir.rglob("events.out.tfevents.*"))
