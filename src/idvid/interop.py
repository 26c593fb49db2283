"""Checkpoints in and out: kit checkpoints, checkpoint formats, and the kit's own ``idvid`` format.

The `convert`, `export` and `consolidate` verbs are in ``idvid.verbs.convert``.

A *kit checkpoint* is a Lightning checkpoint of ``IdentityVideoModule``: its
``hyper_parameters`` hold the model's architecture (backbone, conditioners,
injectors) and its ``state_dict`` the weights, so ``load_module(path)`` rebuilds
the model with no other config.

Formats are plugins (kind ``format``): a format that can *read* turns a foreign
checkpoint into the model-config nodes and state dict of a kit model; one that can
*write* turns a kit model into the foreign layout. The core ships the ``idvid``
format (write only): the kit's own diffusers-style folder, which every plan can
export to.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from idvid.atomic_files import write_atomic
from idvid.backbones.lora import has_lora, without_lora
from idvid.errors import CorruptFileError, MissingFileError
from idvid.registry import register_format
from idvid.training.checkpointing import reading_checkpoint

log = logging.getLogger(__name__)


@dataclass
class ConvertedModel:
    """What a format's ``read`` returns: enough to build and fill a kit model."""

    experiment: str  # the experiment (the format plugin's own, shipped in its config package) that fits this model
    backbone: dict[str, Any]  # merged into the experiment's backbone node (sizes, pretrained path)
    injectors: dict[str, Any]  # replaces the experiment's injectors
    state_dict: dict[str, torch.Tensor]  # keys of IdentityVideoModule's state dict
    notes: list[str] = field(default_factory=list)  # said to the user after converting
    # True: the source holds only the method's own weights (e.g. an adapter file); the backbone's come
    # from the experiment's config or `backbone.pretrained`, so they are not expected in state_dict
    adapter_only: bool = False


def read_json_file(path: str | Path) -> Any:
    """The JSON in ``path``; a missing file or one that is not JSON is an error naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist.", "Give the folder that holds it, as it was saved or downloaded."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(
            f"{path} is not valid JSON ({error}).",
            "Restore it from the original download (or `save_pretrained`); it may have been cut short or edited.",
        ) from None


SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a diffusers model folder's safetensors weights, read from their headers only."""
    from safetensors import SafetensorError, safe_open

    if (folder / SAFETENSORS_WEIGHTS).is_file():
        files = [folder / SAFETENSORS_WEIGHTS]
    elif (folder / SAFETENSORS_INDEX).is_file():
        index = read_json_file(folder / SAFETENSORS_INDEX)
        files = sorted({folder / name for name in index.get("weight_map", {}).values()})
    else:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise MissingFileError(
            f"No weights in {folder}: expected {SAFETENSORS_WEIGHTS} (or a sharded {SAFETENSORS_INDEX}) next to "
            f"config.json" + (f"; found {', '.join(others)}." if others else "."),
            "Copy the model's safetensors weights into that folder (convert reads safetensors only; a .bin model "
            "can be re-saved with `Model.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`).",
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if not file.is_file():
            raise MissingFileError(f"{file} is missing (listed in {folder / SAFETENSORS_INDEX}).", "Copy every shard.")
        try:
            with safe_open(str(file), framework="pt") as weights:
                shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
        except SafetensorError as error:
            raise CorruptFileError(
                f"{file} is truncated or corrupt ({error}).", "Copy it again from the original download."
            ) from None
    return shapes


def load_diffusers_model(model_class: Any, folder: str | Path) -> Any:
    """``model_class.from_pretrained(folder)`` after checking the folder: config.json is JSON, safetensors
    weights are there, and they are exactly the tensors (names and shapes) the config describes.

    diffusers itself would leave tensors the weights lack on the meta device, or fail with a shape
    message that names neither file.
    """
    folder = Path(folder)
    config = read_json_file(folder / "config.json")
    shapes = _weight_shapes(folder)
    try:
        with torch.device("meta"):  # the model's tensor layout without allocating it
            expected = {name: tuple(t.shape) for name, t in model_class.from_config(config).state_dict().items()}
    except Exception as error:
        raise CorruptFileError(
            f"{folder / 'config.json'} does not describe a {model_class.__name__} that can be built "
            f"({type(error).__name__}: {error}).",
            "Put the config.json that was saved with the weights back.",
        ) from error
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{k} {shapes[k]} (config: {expected[k]})"
        for k in sorted(set(expected) & set(shapes))
        if shapes[k] != expected[k]
    ]
    if missing or unexpected or wrong:
        found = [
            f"{what} ({len(names)}): {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
            for what, names in (
                ("missing from the weights", missing),
                ("in the weights only", unexpected),
                ("of another shape", wrong),
            )
            if names
        ]
        raise CorruptFileError(
            f"{folder / 'config.json'} does not describe the weights next to it. Tensors " + "; ".join(found),
            "Put the config.json that was saved with these weights back (sizes such as num_layers, "
            "num_attention_heads or attention_head_dim differ).",
        )
    return model_class.from_pretrained(folder)


def load_module(path: str | Path, ema: bool = False, **overrides: Any):
    """Rebuild an ``IdentityVideoModule`` from a kit checkpoint (architecture and weights).

    ``ema=True`` puts the checkpoint's exponential moving average in place of the trained weights.
    """
    from idvid.training.module import IdentityVideoModule

    path = Path(path)
    if is_deepspeed_checkpoint(path):
        with tempfile.TemporaryDirectory() as scratch:
            return load_module(consolidate(path, Path(scratch) / "consolidated.ckpt"), ema=ema, **overrides)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint {path} does not exist; give a .ckpt written by `fit` or `convert` "
            "(or the .ckpt folder of a DeepSpeed run)."
        )
    with reading_checkpoint(path):
        module = IdentityVideoModule.load_from_checkpoint(path, map_location="cpu", weights_only=True, **overrides)
    if ema:
        with reading_checkpoint(path):
            callbacks = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {})
        shadow = next(
            (
                state["shadow"]
                for key, state in callbacks.items()
                if "ExponentialMovingAverage" in key and state.get("shadow")
            ),
            None,
        )
        if shadow is None:
            raise ValueError(f"{path} holds no EMA weights; train with callbacks.ema.enabled=true to keep an average.")
        parameters = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in shadow.items():
                parameters[name].copy_(value)
    return module


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed (ZeRO) checkpoint is a folder: Lightning names it like a file (``step000100.ckpt/``)."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or (path / "checkpoint").is_dir())


def consolidate(folder: str | Path, out: str | Path) -> Path:
    """Gather a ZeRO-2/3 checkpoint folder (shards of every rank) into one kit checkpoint file.

    Needs no GPU and no process group. The file holds fp32 weights plus Lightning's state
    (hyper-parameters, callbacks such as the EMA, loops), so ``load_module``, ``sample``,
    ``export`` and ``init_from`` take it like any other kit checkpoint. Written atomically.
    """
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    folder, out = Path(folder), Path(out)
    if not is_deepspeed_checkpoint(folder):
        raise ValueError(
            f"{folder} is not a DeepSpeed checkpoint folder (one with a `checkpoint/` folder and a `latest` file, "
            "written by `fit trainer=deepspeed_zero2|3`); a .ckpt file needs no consolidation."
        )
    with contextlib.redirect_stdout(io.StringIO()):  # Lightning prints a line per call
        write_atomic(out, lambda tmp: convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(tmp)))
    return out


def build_for_training(cfg) -> L.LightningModule:
    """The module `fit` trains: from config, or from a checkpoint when ``init_from`` is set.

    With ``init_from`` the architecture (backbone sizes, conditioners, injectors) and the weights
    come from the checkpoint; the training setup (recipe, loss, optimizer, schedule, what trains,
    validation, seed) comes from the config, and so do ``backbone.pretrained`` (when set) and
    ``backbone.gradient_checkpointing``. Conditioners and in-block injectors of the config under labels
    the checkpoint lacks are added, starting as initialised: a later training stage adds modules.
    """
    import hydra

    if not cfg.get("init_from"):
        return hydra.utils.instantiate(cfg.model)
    path = Path(cfg.init_from)
    if is_deepspeed_checkpoint(path):
        raise ValueError(
            f"init_from={path} is a DeepSpeed checkpoint folder; gather it into one file first: "
            f"python -m idvid consolidate {path} OUT.ckpt, then init_from=OUT.ckpt."
        )
    if not path.is_file():
        raise FileNotFoundError(f"init_from={path} does not exist; give a .ckpt written by `fit` or `convert`.")
    with reading_checkpoint(path, option="init_from"):
        saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    backbone = dict(saved["backbone"])
    backbone["gradient_checkpointing"] = model_cfg["backbone"].get("gradient_checkpointing", False)
    if model_cfg["backbone"].get("pretrained"):
        backbone["pretrained"] = model_cfg["backbone"]["pretrained"]
    training = {
        k: model_cfg[k]
        for k in ("recipe", "loss", "optimizer", "lr_scheduler", "trainable", "lora", "validation", "seed")
    }
    added = {
        group: {
            label: node
            for label, node in (model_cfg.get(group) or {}).items()
            if node and not (saved.get(group) or {}).get(label)  # a label switched off (null) counts as absent
        }
        for group in ("conditioners", "injectors")
    }
    architecture = {group: {**(saved.get(group) or {}), **nodes} for group, nodes in added.items() if nodes}
    log.info("init_from %s: architecture and weights from the checkpoint, training setup from the config", path)
    for group, nodes in added.items():
        if nodes:
            log.info("init_from: the config adds %s %s (they start as initialised)", group, ", ".join(nodes))
    return load_module(path, backbone=backbone, **architecture, **training)


def save_module(module: L.LightningModule, path: str | Path) -> Path:
    """Write a kit checkpoint for a module that was not trained by a Trainer (e.g. a converted one).

    Written atomically: a file already at `path` stays whole until the new one replaces it.
    """
    path = Path(path)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    write_atomic(path, lambda tmp: trainer.save_checkpoint(tmp))
    return path


@register_format("idvid")
class KitFormat:
    """The kit's own diffusers-style folder; every plan can be written to it.

    ``OUT/transformer/`` is the backbone's diffusers transformer (``save_pretrained``; the input
    layer already widened for input_concat channels); a model trained with ``trainable=lora`` adds
    ``OUT/transformer_lora/pytorch_lora_weights.safetensors`` in the family's diffusers LoRA format
    (``Backbone.save_lora``; read by ``transformer.load_lora_adapter`` / ``pipe.load_lora_weights``).
    ``OUT/injectors/<label>/`` holds each injector's config node (``config.json``) and weights
    (``diffusion_pytorch_model.safetensors``), and
    ``OUT/idvid_model.json`` the whole model config. ``load_module`` of the checkpoint remains
    the way to rebuild a model; this folder is for tools that read diffusers layouts.
    """

    def write(self, module, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        transformer = module.backbone.transformer
        # Trained with LoRA: the base transformer as it was, and the adapter in diffusers' LoRA format.
        without_lora(transformer, merge=False).save_pretrained(out / "transformer")
        if has_lora(transformer):
            module.backbone.save_lora(out / "transformer_lora")
        hparams = dict(module.hparams)
        for label, injector in module.plan.injectors.items():
            folder = out / "injectors" / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(hparams["injectors"][label], indent=2))
            weights = {k: v.contiguous() for k, v in injector.state_dict().items()}
            if weights:
                save_file(weights, folder / "diffusion_pytorch_model.safetensors")
        (out / "idvid_model.json").write_text(json.dumps(hparams, indent=2, default=str))
