"""Every script in benchmarks/ runs at its --smoke size (seconds), so none can silently break again.

The scripts run in this process (``runpy``, as ``python benchmarks/X.py --smoke`` would), which keeps
the imports shared; each check reads the figures the script prints.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from omegaconf import OmegaConf

from ..conftest import compose_config

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# script -> (extra arguments, a line every successful run prints)
SMOKE_RUNS = {
    "consisid_forward_backward": ([], "ratio kit / diffusers:"),
    "consisid_sampling": ([], "ratio kit / pipeline:"),
    "dataloader_wait": ([], "dataloader wait:"),
    "wan_overhead": ([], "ratio kit / diffusers (median of pairs):"),
    "reference_sampling": ([], "wan_tiny: ratio with / without reference:"),
    "toy_ablation": ([], "toy ablation: 1 rows, 1 seed(s)"),
    "training_step[cogvideox_5b]": (["--model", "cogvideox_5b", "--check-flops"], '"size": "smoke"'),
    "training_step[wan2.1_1.3b]": (["--model", "wan2.1_1.3b", "--check-flops"], '"size": "smoke"'),
}


def run_script(name: str, arguments: list[str], monkeypatch, capsys) -> str:
    script = BENCHMARKS / f"{name.split('[')[0]}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--smoke", *arguments])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def test_every_benchmark_script_has_a_smoke_run():
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")}
    assert scripts == {name.split("[")[0] for name in SMOKE_RUNS}


@pytest.mark.parametrize("name", SMOKE_RUNS)
def test_benchmark_runs_at_smoke_size(name, monkeypatch, capsys):
    arguments, expected = SMOKE_RUNS[name]
    output = run_script(name, arguments, monkeypatch, capsys)
    assert expected in output, output
    if name.startswith("training_step"):
        result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        assert result["step_time_s"] > 0 and result["model_tflops_per_step"] > 0
        # The written-down FLOP formula agrees with torch's count of the real transformer forward.
        assert 0.95 < result["flops_check_counted_over_analytic"] < 1.05


@pytest.mark.parametrize("config, billions", [("wan_1_3b_shape", (1.3, 1.5)), ("wan_14b_shape", (13.5, 14.5))])
def test_wan_shape_configs_have_the_published_model_sizes(config, billions):
    """The full-size benchmark shapes are Wan2.1-T2V-1.3B's and 14B's (counted on the meta device: no memory)."""
    transformer = OmegaConf.to_container(compose_config([f"backbone={config}"]).backbone.transformer, resolve=True)
    with torch.device("meta"):
        model = WanTransformer3DModel(**transformer)
    parameters = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions[0] < parameters < billions[1], parameters
