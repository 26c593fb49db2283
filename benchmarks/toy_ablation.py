"""The toy ablation over several training seeds: every plan of a sweep, per seed, then mean and spread per plan.

Runs ``python -m idvid ablate sweep=<sweep>`` (default ``consisid_toy``: ConsisID's plans a-g on the toy
identity set, scored on the held-out identities with ``pixel_identity``) once per training seed into
``<out>/seed<k>/`` (resumable, as ablate is), plus an UNTRAINED reference (the first plan with lr 0,
the same fit and sampling otherwise) into ``<out>/untrained/``. Writes ``<out>/toy_ablation.md`` (mean
+- std over seeds of each report column, fit seconds per plan) and ``<out>/toy_spectra.png`` (each
plan's face-region spectrum averaged over seeds), and prints the table.

    python benchmarks/toy_ablation.py [--seeds 0 1 2] [--steps 300] [--plans plan_a plan_c] [--out DIR]
    python benchmarks/toy_ablation.py --sweep toy --plans concatid standin --no-untrained \
        '+experiment_overrides.standin=["model.trainable=all"]'     # ablate overrides go last
    python benchmarks/toy_ablation.py --smoke      # one plan, 2 steps, on the demo data, no untrained row (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from idvid import config_packages
from idvid.evaluation import frequency

# --smoke: the bundled demo instead of the toy set (no 6-minute build in CI), 2 steps, tiny evaluation
SMOKE_FIT = ["data=demo", "data.num_frames=5", "data.frame_stride=2", "trainer.max_steps=2"]


def sweep_config(sweep: str, out: Path, smoke: bool, extra: list[str]) -> dict:
    overrides = [f"sweep={sweep}", f"out={out}", *extra]
    if smoke:
        overrides += ["eval_set.manifest=null", "eval_set.count=2", "eval_set.steps=2"]
    cfg = OmegaConf.to_container(config_packages.compose("ablate", overrides), resolve=True)
    if smoke:  # the sweep's data (the toy set) is replaced by SMOKE_FIT's
        cfg["fit_overrides"] = [o for o in cfg["fit_overrides"] if not o.startswith("data=")]
    return cfg


def run_one(cfg: dict, out: Path, experiments: list[str], extra_fit: list[str]) -> dict[str, dict]:
    from idvid.verbs.ablate import ablate

    cfg = {**cfg, "out": str(out), "experiments": experiments}
    cfg["fit_overrides"] = [*cfg["fit_overrides"], *extra_fit]
    return ablate(cfg)


def spread(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def summarise(cfg: dict, runs: dict[str, dict[str, dict]], out: Path, seeds: list[int], steps: int) -> str:
    """The table over seeds: one row per plan (and the untrained reference), mean +- std per column."""
    columns = cfg["report"]["columns"]
    header = ["plan", "runs ok", *(c["title"] for c in columns), "fit s (mean)"]
    rows = []
    for plan in runs:
        results = runs[plan]
        ok = [r for r in results.values() if r.get("status") == "ok"]
        cells = [plan, f"{len(ok)}/{len(results)}"]
        cells += [spread([r.get("metrics", {}).get(c["metric"], math.nan) for r in ok]) for c in columns]
        cells.append(f"{statistics.mean(r.get('seconds', math.nan) for r in results.values()):.0f}")
        rows.append(cells)
    text = f"# {cfg['report']['title']}: {len(seeds)} training seed(s) {seeds}, {steps} steps each\n\n"
    text += "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    text += "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
    text += f"\nmean +- std over training seeds. {cfg['report'].get('notes', '').strip()}\n"
    (out / "toy_ablation.md").write_text(text)
    return text


def write_spectra(out: Path, folders: dict[str, list[Path]]) -> Path | None:
    """Each plan's set spectrum averaged over its seeds, side by side, as ``toy_spectra.png``."""
    images = {}
    for plan, plan_folders in folders.items():
        files = [f / "eval" / "frequency" / "set_spectrum.npy" for f in plan_folders]
        spectra = [np.load(path) for path in files if path.is_file()]
        if spectra:
            images[plan] = frequency.spectrum_image(np.mean(spectra, axis=0))
    if not images:
        return None
    return frequency.write_png(out / "toy_spectra.png", frequency.side_by_side(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="consisid_toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps per fit (default: the sweep's)")
    parser.add_argument("--plans", nargs="+", default=None, help="default: the sweep's experiments")
    parser.add_argument("--out", type=Path, default=Path("ablation_toy"))
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained (lr 0) reference")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("overrides", nargs="*", help="ablate config overrides, e.g. +experiment_overrides.X=[...]")
    args = parser.parse_args()
    out = args.out.absolute()
    if args.smoke:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="toy_ablation_smoke_"))
    cfg = sweep_config(args.sweep, out, args.smoke, args.overrides)
    plans = args.plans or cfg["experiments"]
    seeds = args.seeds
    extra = list(SMOKE_FIT) if args.smoke else []
    if args.smoke:
        plans, seeds = plans[:1], seeds[:1]
    if args.steps is not None:
        extra.append(f"trainer.max_steps={args.steps}")
    steps = next(int(o.split("=")[1]) for o in reversed([*cfg["fit_overrides"], *extra]) if "max_steps=" in o)
    start = time.perf_counter()
    runs: dict[str, dict[str, dict]] = {plan: {} for plan in plans}
    folders: dict[str, list[Path]] = {plan: [] for plan in plans}
    for seed in seeds:
        results = run_one(cfg, out / f"seed{seed}", plans, [*extra, f"seed={seed}"])
        for plan, result in results.items():
            runs[plan][f"seed{seed}"] = result
            folders[plan].append(out / f"seed{seed}" / plan)
    if not (args.no_untrained or args.smoke):
        untrained = f"{plans[0]} untrained (lr 0)"
        results = run_one(cfg, out / "untrained", plans[:1], [*extra, "optimizer.lr=0", f"seed={seeds[0]}"])
        runs[untrained] = {"seed": results[plans[0]]}
        folders[untrained] = [out / "untrained" / plans[0]]
    text = summarise(cfg, runs, out, seeds, steps)
    spectra = write_spectra(out, folders)
    print(text)
    print(json.dumps({"out": str(out), "spectra": str(spectra), "seconds": round(time.perf_counter() - start)}))
    print(f"toy ablation: {len(runs)} rows, {len(seeds)} seed(s), {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
