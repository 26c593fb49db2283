"""The `convert`, `export` and `consolidate` verbs: checkpoints in and out through format plugins."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from idvid import config_packages
from idvid.errors import ConfigError
from idvid.interop import ConvertedModel, consolidate, load_module, save_module
from idvid.output_paths import check_output_file, check_output_folder, replace_folder
from idvid.registry import REGISTRIES, PluginKind

log = logging.getLogger(__name__)


def convert(format_name: str, source: str, out: str, overrides: list[str], overwrite: bool = False) -> tuple[Path, str]:
    """Read a foreign checkpoint with a format plugin, save it as a kit checkpoint; returns (path, experiment).

    An existing `out` is replaced only with `overwrite` (checked before the source is read).
    """
    import hydra

    out_path = check_output_file(out, overwrite)
    reader = REGISTRIES[PluginKind.FORMAT].get(format_name)()
    if not hasattr(reader, "read"):
        raise ConfigError(
            f"Format {format_name!r} cannot be read (export only).", f"Formats that read: {_formats('read')}."
        )
    converted: ConvertedModel = reader.read(Path(source))
    # scale=tiny: the converted weights bring their own architecture and VAE, which the toy demo's codec
    # (the default scale) would replace.
    cfg = config_packages.compose("config", [f"experiment={converted.experiment}", "scale=tiny", *overrides])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["backbone"] = {**model_cfg["backbone"], **converted.backbone}
    model_cfg["injectors"] = converted.injectors
    torch.manual_seed(0)  # parts not in the source (e.g. demo-scale encoders) are built reproducibly
    module = hydra.utils.instantiate(model_cfg)
    if converted.adapter_only:
        _check_adapter_fits(module, converted.state_dict, format_name)
    missing, unexpected = module.load_state_dict(converted.state_dict, strict=False)
    # A foreign checkpoint brings the trained parts; frozen encoders come from config or `pretrained`.
    frozen = tuple(f"backbone.{name}." for name in module.backbone.frozen_modules) + ("conditioners.",)
    if converted.adapter_only:  # the backbone's own weights come from config or backbone.pretrained
        frozen += ("backbone.",)
    missing = [k for k in missing if not k.startswith(frozen)]
    if missing or unexpected:
        raise ValueError(
            f"Converted weights do not fit the kit model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            f"This is a bug in the {format_name!r} format plugin."
        )
    path = save_module(module, out_path)
    for note in converted.notes:
        log.warning(note)
    return path, converted.experiment


def _check_adapter_fits(module, state_dict: dict[str, torch.Tensor], format_name: str) -> None:
    """Refuse adapter weights made for another backbone (other width or depth), naming the difference."""
    own = module.state_dict()
    wrong = [
        f"{key} {tuple(value.shape)} (this model: {tuple(own[key].shape) if key in own else 'no such weight'})"
        for key, value in state_dict.items()
        if key not in own or own[key].shape != value.shape
    ]
    missing = [key for key in own if key.startswith("plan.") and key not in state_dict]
    if wrong or missing:
        info = module.backbone.info
        raise ConfigError(
            f"The {format_name!r} weights do not fit this backbone ({info.num_layers} blocks of width "
            f"{info.hidden_size}): {'; '.join(wrong[:3]) or 'missing ' + ', '.join(missing[:3])}.",
            "Convert onto the backbone the adapter was trained for: backbone.pretrained=<its diffusers folder> "
            "(or a backbone config of the same size).",
        )


def export(checkpoint: str, format_name: str, out: str, ema: bool = False, overwrite: bool = False) -> Path:
    """Write a kit checkpoint in another layout to the folder `out`.

    A non-empty `out` is refused unless `overwrite`; then its contents are replaced as a whole (the
    new export is written beside it and swapped in), never merged with an older export.
    """
    writer = REGISTRIES[PluginKind.FORMAT].get(format_name)()
    if not hasattr(writer, "write"):
        raise ConfigError(f"Format {format_name!r} cannot be written.", f"Formats that write: {_formats('write')}.")
    out_path = check_output_folder(out, overwrite, protected=(Path(checkpoint),))
    module = load_module(checkpoint, ema=ema)
    return replace_folder(out_path, lambda folder: writer.write(module, folder))


def load_into(module: Any, loads: Sequence[str]) -> None:
    """Load exported files into a built model, each ``FORMAT=FILE`` with that format's ``load_into(module, path)``.

    (E.g. learned text tokens exported from another run, before sampling.) Checked in full before any loads.
    """
    readers, loadable = [], f"Formats that load: {_formats('load_into')}."
    for spec in loads:
        format_name, sep, file = spec.partition("=")
        if not sep or not format_name or not file:
            raise ConfigError(f"--load {spec!r} is not FORMAT=FILE.", loadable)
        if format_name not in REGISTRIES[PluginKind.FORMAT]:
            raise ConfigError(f"--load {spec!r}: no format {format_name!r}.", loadable)
        reader = REGISTRIES[PluginKind.FORMAT].get(format_name)()
        if not hasattr(reader, "load_into"):
            raise ConfigError(f"Format {format_name!r} cannot be loaded into a model.", loadable)
        readers.append((reader, Path(file)))
    for reader, file in readers:
        reader.load_into(module, file)


def _formats(method: str) -> str:
    return ", ".join(e.name for e in REGISTRIES[PluginKind.FORMAT].entries() if hasattr(e.obj, method)) or "(none)"


def main(verb: str, args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m idvid {verb}")
    if verb == "convert":
        parser.add_argument(
            "--from", dest="format", required=True, help="source format (`python -m idvid plugins` lists them)"
        )
        parser.add_argument("source", help="the foreign checkpoint (folder or file)")
        parser.add_argument("--out", required=True, help="kit checkpoint to write (.ckpt)")
        parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides for the experiment config")
        options = parser.parse_args(args)
        path, experiment = convert(options.format, options.source, options.out, options.overrides, options.overwrite)
        print(f"wrote {path}\nfine-tune it: python -m idvid fit experiment={experiment} scale=tiny init_from={path}")
    elif verb == "consolidate":
        parser.add_argument("folder", help="a DeepSpeed checkpoint folder, e.g. outputs/<run>/checkpoints/last.ckpt")
        parser.add_argument("out", help="kit checkpoint file to write (.ckpt)")
        parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        options = parser.parse_args(args)
        print(f"wrote {consolidate(options.folder, check_output_file(options.out, options.overwrite))}")
    else:
        parser.add_argument("checkpoint", help="a kit checkpoint (.ckpt) from fit or convert, or a DeepSpeed folder")
        parser.add_argument(
            "--to",
            dest="format",
            required=True,
            help="target format, e.g. idvid (`python -m idvid plugins` lists them)",
        )
        parser.add_argument("out", help="folder to write")
        parser.add_argument("--ema", action="store_true", help="export the EMA of the weights")
        parser.add_argument(
            "--overwrite", action="store_true", help="replace the contents of a non-empty OUT (else refused)"
        )
        options = parser.parse_args(args)
        path = export(options.checkpoint, options.format, options.out, ema=options.ema, overwrite=options.overwrite)
        print(f"wrote {path}")
