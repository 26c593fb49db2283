"""The ``ablate`` verb: fit every experiment, sample one fixed evaluation set, evaluate, write the table.

The experiments are ``experiments=[...]`` or a plugin's sweep (config group ``sweep``: the experiments,
their overrides and the report's title, columns and notes). For each experiment, in ``<out>/<experiment>/``:

1. **fit**: ``python -m idvid fit experiment=<name> scale=<fit_scale> hydra.run.dir=<out>/<name>/fit <overrides>`` in a
   child process. A child process per experiment (rather than one ``--multirun``) keeps the sweep
   alive when one run diverges or crashes (Hydra's basic launcher stops at the first failing job),
   frees all memory between runs, and is exactly the command a user would type to redo one run.
   A run that stops with ``DivergenceError`` (the NaN guard) is marked *unstable*; any other failure is
   marked *failed* with the error's last line.
2. **sample**: the run's ``last.ckpt`` generates one video per reference and seed of the evaluation
   set (fixed references, prompts and seeds, shared by every experiment).
3. **evaluate**: ``idvid.evaluation.evaluate`` with the ``evaluate`` config node.

Resumable: ``fit_status.json`` records a finished fit and ``result.json`` (written last, atomically) a
finished experiment; a re-run skips both, and continues an interrupted fit from its ``last.ckpt``.
A *failed* fit (an error other than divergence) gets no ``result.json`` and is tried again.
Outputs in ``<out>``: ``ablation.md``, ``ablation.csv``, ``ablation_spectra.png``,
``ablation_profiles.png`` and ``tensorboard/`` (HParams view).
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf

from idvid.atomic_files import write_json_atomic
from idvid.errors import TRACEBACK_HINT, ConfigError
from idvid.evaluation import frequency
from idvid.evaluation.evaluate import evaluate
from idvid.evaluation.report import markdown_table, write_csv

log = logging.getLogger(__name__)

# The metric group (evaluate's ``metrics=[...]``) that reports each aggregate, where the names differ: a
# group whose model is missing is "unavailable", and so are its columns. A column of a plugin's metric
# names its group in the config: {title: ..., metric: <aggregate>, group: <metric group>}.
METRIC_GROUPS = {
    "clipscore": "clip",
    "clip_t": "clip",
    "clip_i": "clip",
    "smoothness_clip": "clip",
    "smoothness_dino": "dino",
    "fid_face": "fid",
    "fid_face_per_frame": "fid",
}
SMALL_SCALE_STATEMENT = (
    "SMALL SCALE: these runs train a randomly initialised backbone (no backbone.pretrained) for minutes at most; "
    "their numbers compare the runs at this scale only and are NOT paper results."
)


# ------------------------------------------------------------------ evaluation set


def prepare_eval_set(cfg: dict, out: Path) -> tuple[Path, Path, list[str]]:
    """The fixed evaluation set in ``<out>/eval_set``: ``refs/NAME_sSEED.png``, ``prompts.tsv``, and the names.

    From ``eval_set.refs`` + ``eval_set.prompts`` when given, else from the first ``eval_set.count`` clips of
    ``eval_set.manifest`` (null: the bundled demo): the first frame with a face, and the clip's caption.
    """
    from idvid.evaluation.inputs import find_reference, read_prompts

    spec = cfg["eval_set"]
    folder = out / "eval_set"
    refs_dir, prompts_file = folder / "refs", folder / "prompts.tsv"
    # Finished experiments were scored on the recorded set: a different set would make the table compare
    # numbers from different inputs.
    recorded = folder / "eval_set.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != spec:
        raise ValueError(
            f"eval_set differs from the one {out} was evaluated with ({recorded}: {recorded.read_text().strip()}); "
            f"use another out= for a new evaluation set, or delete {out} to start over"
        )
    sources: list[tuple[str, np.ndarray, str]] = []
    if spec.get("refs"):
        if not spec.get("prompts"):
            raise ValueError("eval_set.refs is set but eval_set.prompts is not; give a NAME<TAB>prompt file")
        for name, prompt in sorted(read_prompts(spec["prompts"]).items()):
            path = find_reference(Path(spec["refs"]), name)
            if path is None:
                raise FileNotFoundError(f"no reference image {name}.png or {name}.jpg in {spec['refs']}")
            sources.append((name, cv2.imread(str(path)), prompt))
    else:
        sources = _manifest_references(spec.get("manifest"), int(spec["count"]))
    names = []
    refs_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, bgr, prompt in sources:
        for seed in spec["seeds"]:
            sample_name = f"{name}_s{seed}"
            cv2.imwrite(str(refs_dir / f"{sample_name}.png"), bgr)
            lines.append(f"{sample_name}\t{prompt}")
            names.append(sample_name)
    prompts_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json_atomic(recorded, spec)
    return refs_dir, prompts_file, names


def _manifest_references(manifest: str | None, count: int) -> list[tuple[str, np.ndarray, str]]:
    from idvid.data.manifest import load_annotations, read_manifest
    from idvid.data.video_io import read_mp4
    from idvid.demo import build_demo

    entries = read_manifest(manifest or build_demo())
    sources = []
    for entry in entries[:count]:
        valid = load_annotations(entry["annotations"], with_images=False)["valid"]
        if not valid.any():
            continue
        frame = read_mp4(entry["video"])[int(np.argmax(valid))]
        sources.append((entry["id"], cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), entry["caption"]))
    return sources


# ------------------------------------------------------------------ stages


def run_fit(name: str, cfg: dict, folder: Path) -> dict[str, Any]:
    """Fit one experiment in a child process; returns its status record (also written to fit_status.json)."""
    run_dir = folder / "fit"
    overrides = [f"experiment={name}", f"scale={cfg['fit_scale']}", f"hydra.run.dir={run_dir}", *cfg["fit_overrides"]]
    overrides += list((cfg.get("experiment_overrides") or {}).get(name, []))
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        overrides.append("ckpt_path=last")  # an interrupted fit continues where it stopped
    else:
        overrides.append("overwrite=true")  # no complete checkpoint to resume: this plan's fit starts over
    command = [sys.executable, "-m", "idvid", "fit", *overrides]
    log.info("fit %s: %s", name, " ".join(command[1:]))
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "fit.log").open("w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    text = (folder / "fit.log").read_text(errors="replace")
    status: dict[str, Any] = {"status": "ok", "seconds": round(time.perf_counter() - start, 1), "command": command}
    if code != 0:
        status["status"] = "unstable" if "DivergenceError" in text else "failed"
        status["reason"] = failure_reason(text, code)
    elif not (run_dir / "checkpoints" / "last.ckpt").is_file():
        status.update(status="failed", reason=f"fit ended without {run_dir / 'checkpoints' / 'last.ckpt'}")
    write_json_atomic(folder / "fit_status.json", status)
    return status


def failure_reason(log_text: str, code: int) -> str:
    """The line of a failed fit's log that says what went wrong.

    A Python exception's own line ("module.SomeError: message"), else Hydra's config error ("Could not
    ..."), else the last line that is not Hydra's HYDRA_FULL_ERROR hint.
    """
    # The kit's own user error ("idvid fit: error: ...", continued on indented lines) says it all.
    kit_error = re.search(r"^idvid \w+: error: .*(?:\n  .*)*", log_text, flags=re.M)
    if kit_error:
        return " ".join(line.strip() for line in kit_error.group(0).splitlines() if TRACEBACK_HINT not in line)[:500]
    hints = ("HYDRA_FULL_ERROR", TRACEBACK_HINT)
    lines = [line.strip() for line in log_text.splitlines() if line.strip() and not any(h in line for h in hints)]
    exceptions = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line)]
    hydra_errors = [line for line in lines if "Could not" in line]
    return ((exceptions or hydra_errors or lines or [f"exit code {code}"])[-1])[:500]


def _face(cfg: dict) -> dict[str, Any]:
    """The sweep's face backend node; insightface without models_dir reads evaluate.models.insightface."""
    from idvid.evaluation.metrics import face_backend_node

    return face_backend_node({"face": cfg.get("face"), "models": cfg["evaluate"]["models"]})


def sample_eval_set(
    folder: Path,
    refs_dir: Path,
    prompts_file: Path,
    names: list[str],
    cfg: dict,
    rewrites: Mapping[str, str] | None = None,
) -> Path:
    """One video per evaluation-set entry from the fit's last.ckpt, in ``<folder>/videos``.

    ``rewrites`` (word -> text, the experiment's ``prompt_rewrites``) change the prompts it samples with,
    e.g. to name learned text tokens; the metrics read ``prompts_file`` as it is.
    """
    from idvid.evaluation.inputs import read_prompts
    from idvid.interop import load_module
    from idvid.training.visuals import write_video
    from idvid.verbs.sample import reference_batch

    spec = cfg["eval_set"]
    module = load_module(folder / "fit" / "checkpoints" / "last.ckpt").eval()
    default_frames, default_height, default_width = module.backbone.default_video_size
    frames = spec.get("frames") or default_frames
    height = spec.get("height") or default_height
    width = spec.get("width") or default_width
    prompts = read_prompts(prompts_file)
    videos = folder / "videos"
    for name in names:
        seed = int(name.rsplit("_s", 1)[1])
        prompt = rewrite_prompt(prompts[name], rewrites or {})
        batch = reference_batch(refs_dir / f"{name}.png", prompt, height, width, _face(cfg))
        video = module.generate(
            batch,
            frames,
            height,
            width,
            int(spec["steps"]),
            float(spec["guidance"]),
            seed=seed,
            noise_prior=spec.get("noise_prior"),
        )
        write_video(videos / f"{name}.mp4", video[0])
    return videos


def rewrite_prompt(prompt: str, rewrites: Mapping[str, str]) -> str:
    """``prompt`` with the first whole-word match of each key replaced by its text (unchanged when absent)."""
    for word, text in rewrites.items():
        literal = text.replace("\\", "\\\\")  # the replacement is text, not a pattern
        prompt, found = re.subn(rf"\b{re.escape(word)}\b", literal, prompt, count=1)
        if not found:
            log.warning("prompt_rewrites: %r is not in the prompt %r; it is sampled unchanged", word, prompt)
    return prompt


def evaluate_experiment(folder: Path, refs_dir: Path, prompts_file: Path, cfg: dict) -> dict[str, Any]:
    settings = dict(cfg["evaluate"])
    settings["face"] = _face(cfg)  # one face backend for the sweep: it reads the references and the videos
    settings.update(videos=str(folder / "videos"), refs=str(refs_dir), prompts=str(prompts_file))
    settings.update(out=str(folder / "eval"), tensorboard_dir=None)
    result = evaluate(settings)
    values = {row["metric"]: row["value"] for row in result.aggregate}
    return {"metrics": values, "unavailable": result.unavailable, "skipped": result.skipped}


# ------------------------------------------------------------------ table and figures


def _cell(value: Any) -> Any:
    if value is None or value == "":
        return "-"
    if value == "unavailable":
        return "n/a"
    return value


def table_rows(results: dict[str, dict], columns: list[dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for name, result in results.items():
        metrics = result.get("metrics", {})
        unavailable = result.get("unavailable", {})
        row: dict[str, Any] = {"plan": name, "status": result["status"]}
        for column in columns:
            metric = column["metric"]
            group = column.get("group") or METRIC_GROUPS.get(metric, metric)
            row[column["title"]] = "unavailable" if group in unavailable else metrics.get(metric, "")
        notes = [result.get("reason", "")]
        if metrics.get("frames_with_face") == 0:
            notes.append("no face detected in the generated videos")
        if metrics.get("set_freq_full_frame_videos"):
            notes.append(f"spectra of {metrics['set_freq_full_frame_videos']:.0f} face-less video(s) from full frames")
        row["note"] = "; ".join(note for note in notes if note)
        rows.append(row)
    return rows


def write_table(out: Path, results: dict[str, dict], from_scratch: bool, report: dict[str, Any]) -> str:
    rows = table_rows(results, report["columns"])
    columns = ["plan", "status", *(column["title"] for column in report["columns"]), "note"]
    write_csv(out / "ablation.csv", rows, columns)
    text = f"# {report['title']}\n\n"
    if from_scratch:
        text += f"**{SMALL_SCALE_STATEMENT}**\n\n"
    text += markdown_table(columns, [[_cell(row[c]) for c in columns] for row in rows])
    unavailable = {k: v for result in results.values() for k, v in result.get("unavailable", {}).items()}
    if unavailable:
        text += "\nn/a = metric unavailable (its model is not on disk):\n\n"
        text += "".join(f"- {name}: {reason}\n" for name, reason in unavailable.items())
    if report.get("notes"):
        text += f"\n{report['notes'].strip()}\n"
    (out / "ablation.md").write_text(text, encoding="utf-8")
    return text


def write_spectra(out: Path, results: dict[str, dict], config: frequency.FrequencyConfig) -> dict[str, np.ndarray]:
    """``ablation_spectra.png`` (set spectra side by side) and ``ablation_profiles.png``; returns the pictures."""
    spectra = {}
    for name in results:
        path = out / name / "eval" / "frequency" / "set_spectrum.npy"
        if path.is_file():
            spectra[name] = np.load(path)
    if not spectra:
        return {}
    pictures = {
        "spectra": frequency.side_by_side({n: frequency.spectrum_image(s) for n, s in spectra.items()}),
        "profiles": frequency.profile_plot({n: frequency.radial_profile(s) for n, s in spectra.items()}, config),
    }
    for key, picture in pictures.items():
        frequency.write_png(out / f"ablation_{key}.png", picture)
    return pictures


def log_hparams(out: Path, name: str, result: dict, fit_overrides: list[str], columns: list[dict[str, str]]) -> None:
    """One HParams entry per experiment: the plan and status as hyper-parameters, the table's numbers as metrics."""
    from torch.utils.tensorboard import SummaryWriter

    metrics = {}
    for metric in (column["metric"] for column in columns):
        value = result.get("metrics", {}).get(metric)
        if isinstance(value, (int, float)) and not math.isnan(float(value)):
            metrics[f"ablation/{metric}"] = float(value)
    hparams = {"experiment": name, "status": result["status"], "fit_overrides": " ".join(fit_overrides)}
    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_hparams(hparams, metrics or {"ablation/finished": 1.0}, run_name=name)


# ------------------------------------------------------------------ the verb


def ablate(cfg: dict | DictConfig) -> dict[str, dict]:
    """Run (or resume) the sweep; returns {experiment: result record}."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not cfg["experiments"]:
        raise ConfigError(
            "ablate: no experiments to run.",
            "Name them (experiments=[plan_c,my_plan]) or choose a sweep that lists them "
            f"(sweep=NAME; installed: {', '.join(installed_sweeps()) or 'none'}); a sweep of settings "
            "only (such as the kit's toy) takes experiments=[...] as well.",
        )
    out = Path(cfg["out"]).absolute()
    out.mkdir(parents=True, exist_ok=True)
    refs_dir, prompts_file, names = prepare_eval_set(cfg, out)
    results: dict[str, dict] = {}
    for name in cfg["experiments"]:
        folder = out / name
        marker = folder / "result.json"
        if marker.is_file():
            results[name] = json.loads(marker.read_text())
            log.info("%s: finished earlier (%s), skipped", name, marker)
            print(f"{name}: finished earlier, skipped ({marker})")
            continue
        status_file = folder / "fit_status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else None
        if status is None or status["status"] == "failed":  # a failure (not a divergence) may be transient: retry
            status = run_fit(name, cfg, folder)
        result = {**status}
        if status["status"] == "ok":
            try:
                rewrites = (cfg.get("prompt_rewrites") or {}).get(name)
                sample_eval_set(folder, refs_dir, prompts_file, names, cfg, rewrites)
                result.update(evaluate_experiment(folder, refs_dir, prompts_file, cfg))
            except Exception as error:  # one experiment's failure must not lose the rest of the sweep
                log.exception("%s: sampling or evaluation failed", name)
                result.update(status="failed", reason=f"sampling/evaluation: {type(error).__name__}: {error}"[:500])
        print(f"{name}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else ""))
        results[name] = result
        if result["status"] == "failed":  # no marker: the next run tries this experiment again
            continue
        log_hparams(out, name, result, cfg["fit_overrides"], cfg["report"]["columns"])
        write_json_atomic(marker, result)  # last: its presence means this experiment is done
    from_scratch = any(_is_from_scratch(out / name) for name in results)
    text = write_table(out, results, from_scratch, cfg["report"])
    freq = {k: v for k, v in cfg["evaluate"]["frequency"].items() if k != "region_fallback"}
    pictures = write_spectra(out, results, frequency.FrequencyConfig(**freq))
    if pictures:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            for key, picture in pictures.items():
                writer.add_image(f"ablation/{key}", picture, 0, dataformats="HWC")
    print(text)
    return results


def installed_sweeps() -> list[str]:
    from idvid.config_packages import all_config_packages

    return sorted({name for package in all_config_packages() for name in package.groups().get("sweep", [])})


def _is_from_scratch(folder: Path) -> bool:
    config = folder / "fit" / "config.yaml"
    return config.is_file() and OmegaConf.load(config).backbone.get("pretrained") is None


def main(cfg: DictConfig) -> dict[str, dict]:
    start = time.perf_counter()
    results = ablate(cfg)
    out = Path(cfg.out).absolute()
    print(f"wrote {out / 'ablation.md'}, {out / 'ablation.csv'}, spectra in {out / 'ablation_spectra.png'}")
    print(f"TensorBoard (HParams tab): tensorboard --logdir {out / 'tensorboard'}")
    print(f"ablate took {time.perf_counter() - start:.0f} s")
    return results
