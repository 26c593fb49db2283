"""The `fit` verb: compose, print and save the config, build every component, train."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from idvid.interop import build_for_training
from idvid.output_paths import OutputExistsError
from idvid.training.checkpointing import PREVIOUS_SUFFIX, check_checkpoint_file, resolve_checkpoint
from idvid.verbs.argument_types import check_argument_types

log = logging.getLogger("idvid")

# Printed first, in this order; the rest follow alphabetically.
TREE_ORDER = ("experiment_name", "backbone", "conditioners", "injectors", "recipe", "data", "model", "trainer")


def config_tree(cfg: DictConfig) -> Tree:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in TREE_ORDER if k in cfg] + sorted(k for k in cfg if k not in TREE_ORDER)
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text, "yaml", background_color="default"))
    return tree


def _resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        candidate = run_dir / "checkpoints" / "last.ckpt"  # a file, or a folder under DeepSpeed
        found = resolve_checkpoint(candidate)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path=last but {candidate} does not exist. Resume in the same run dir "
                f"(hydra.run.dir=<that run>) or give the checkpoint path: ckpt_path=/path/to/x.ckpt."
            )
    else:
        found = resolve_checkpoint(ckpt_path)
        if found is None:
            raise FileNotFoundError(
                f"ckpt_path={ckpt_path} does not exist; give an existing .ckpt (a folder for DeepSpeed runs) or 'last'."
            )
    if found.is_file():  # a DeepSpeed folder is checked by DeepSpeed when it loads
        check_checkpoint_file(found, option="ckpt_path")
    if found.name.endswith(PREVIOUS_SUFFIX):
        log.warning("the run was killed while replacing a checkpoint; resuming from the complete %s", found)
    return str(found)


def refuse_earlier_run(run_dir: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """A new run (no ckpt_path) in a run dir with checkpoints would write over them: refused unless overwrite."""
    earlier = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    if earlier and ckpt_path in (None, "", "null") and not overwrite:
        raise OutputExistsError(
            f"hydra.run.dir={run_dir} holds checkpoints of an earlier run ({', '.join(earlier[:3])})",
            "resume it with ckpt_path=last, train a new run elsewhere (another hydra.run.dir), "
            "or pass overwrite=true to train a new run over it",
        )


def fit(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_argument_types(cfg)  # before anything is built: a wrong type would fail deep inside Lightning
    refuse_earlier_run(run_dir, cfg.get("ckpt_path"), bool(cfg.get("overwrite", False)))
    ckpt_path = _resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)  # a missing or corrupt one stops the run now
    Console().print(config_tree(cfg))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    log.info("run dir: %s (config saved as config.yaml; TensorBoard: tensorboard --logdir %s)", run_dir, run_dir)
    if cfg.backbone.get("pretrained") is None:
        if cfg.backbone.get("codec") is None:
            log.warning("DEMO SCALE: the backbone and encoders are tiny and randomly initialised; samples are noise.")
        else:
            log.warning(
                "TOY SCALE: the transformer is randomly initialised and the codec has no weights; samples show "
                "what this run has learnt so far."
            )

    # The VAE, text encoder and CLIP tower are frozen and kept in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    L.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_for_training(cfg)
    if hasattr(datamodule, "height") and hasattr(datamodule, "width"):  # references are the video's size
        model.plan.check_reference_image_size(datamodule.height, datamodule.width)
    callbacks = [hydra.utils.instantiate(node) for node in cfg.callbacks.values() if node is not None]
    loggers = [hydra.utils.instantiate(node) for node in cfg.logger.values() if node is not None]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    loss = trainer.callback_metrics.get("train/loss")
    return float(loss) if loss is not None else None
