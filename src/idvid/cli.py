"""``python -m idvid <verb> [overrides]``: dispatch to the verbs in ``idvid.verbs``.

The verb is taken out of argv before Hydra parses the rest, so every Hydra feature
(``--multirun``, ``--cfg job``, ``hydra.run.dir=...``) works after it. Configs come from the kit's
``idvid.conf`` package and every installed plugin's ``idvid.configs`` package
(see ``idvid.config_packages``). Every verb reports user errors the same way (``idvid.errors``).
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig

from idvid.config_packages import KIT_CONFIG_PACKAGE, check_config_choices, with_plugin_search_path
from idvid.errors import ConfigError, reported_as_user_errors
from idvid.resolvers import register_resolvers

register_resolvers()  # before any config is composed

VERBS = {
    "fit": "train (Hydra overrides follow, e.g. experiment=plan_c trainer.max_steps=3)",
    "preprocess": "data.raw=DIR data.out=DIR [face=dlib]: raw videos + captions -> training set",
    "plugins": "list registered plugins, config packages and the injection sites",
    "sample": "CKPT --image ref.jpg --prompt TEXT --out video.mp4 [--overwrite] [face=dlib|insightface ...]: a video",
    "animate": "CKPT --image ref.jpg [--drive VIDEO] [--audio AUDIO] --out OUT.mp4: an audio/video-driven portrait",
    "convert": "--from FORMAT PATH --out CKPT [--overwrite] [overrides]: a foreign checkpoint -> kit checkpoint",
    "export": "CKPT --to FORMAT OUT [--overwrite]: kit checkpoint -> foreign layout (formats: see `plugins`)",
    "consolidate": "DEEPSPEED_CKPT_DIR OUT.ckpt [--overwrite]: ZeRO shards of every rank -> one kit checkpoint",
    "evaluate": "videos=DIR refs=DIR prompts=FILE out=DIR: identity, text, FID and frequency metrics",
    "ablate": "fit, sample and evaluate every experiment of an ablation; writes ablation.md",
}


def usage() -> str:
    """The help text: the core's verbs, then those that installed plugins add."""
    from idvid.registry import REGISTRIES, PluginKind

    lines = [f"  {verb:<12} {what}\n" for verb, what in VERBS.items()]
    for entry in REGISTRIES[PluginKind.VERB].entries():
        lines.append(f"  {entry.name:<12} {entry.obj.summary} (from {entry.source})\n")
    return "usage: python -m idvid <verb> [overrides]\n\nverbs:\n" + "".join(lines)


# Settings renamed when every verb came to configure the face backend one way (face=NAME face.options...).
OLD_FACE_KEYS = ("face.backend", "face.dlib_models_dir", "face.insightface_det_size")


def check_old_spellings(overrides: list[str]) -> None:
    """Refuse a renamed setting with the new spelling (Hydra would only say that the key is not in the config)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.removeprefix("evaluate.") in OLD_FACE_KEYS:
            raise ConfigError(
                f"{key} is the old spelling of the face backend setting.",
                "Every verb now takes face=dlib|insightface and face.options.<name>=<value>, e.g. face=insightface "
                "face.options.models_dir=/models/antelopev2 (evaluate and ablate default to models.insightface).",
            )


# Verbs whose settings are plain mappings: their values' types are checked against the shipped config
# (`fit` and `preprocess` check theirs against the classes they build).
DEFAULT_TYPED_VERBS = ("evaluate", "ablate")


def _shipped_defaults(config_name: str) -> dict:
    """The verb's config with no overrides, as a plain container with interpolations left unresolved."""
    from omegaconf import OmegaConf

    from idvid import config_packages

    return OmegaConf.to_container(config_packages.compose(config_name, []), resolve=False)


def _run_hydra(task: Callable[[DictConfig], object], verb: str, overrides: list[str], config_name: str) -> None:
    """Run ``task`` on the config ``<config_name>.yaml`` of the kit's configs composed with ``overrides``."""
    argv = sys.argv
    check_old_spellings(overrides)
    check_config_choices(overrides)
    defaults = _shipped_defaults(config_name) if verb in DEFAULT_TYPED_VERBS else None

    def run(cfg: DictConfig) -> object:
        # Hydra has parsed the overrides; put the verb back, because launchers that re-run this
        # command in new processes (Lightning's DDP) rebuild their command line from sys.argv.
        sys.argv = [argv[0], verb, *overrides]
        with reported_as_user_errors(verb):
            if defaults is not None:
                from idvid.verbs.argument_types import check_types_against_defaults

                check_types_against_defaults(cfg, defaults)
            return task(cfg)

    wrapped = hydra.main(config_path=f"pkg://{KIT_CONFIG_PACKAGE}", config_name=config_name, version_base="1.3")(run)
    sys.argv = [argv[0], *with_plugin_search_path(overrides)]
    try:
        wrapped()
    finally:
        sys.argv = argv


def _fit(cfg: DictConfig) -> float | None:
    # Verbs are imported when run, so that Hydra's own answers (--help, --cfg, a bad override) come
    # without loading torch and Lightning first.
    from idvid.verbs.fit import fit

    return fit(cfg)


def _preprocess(cfg: DictConfig) -> dict:
    from idvid.verbs.preprocess import preprocess

    return preprocess(cfg)


def _evaluate(cfg: DictConfig) -> object:
    from idvid.verbs.evaluate import main as evaluate_main

    return evaluate_main(cfg)


def _ablate(cfg: DictConfig) -> object:
    from idvid.verbs.ablate import main as ablate_main

    return ablate_main(cfg)


HYDRA_VERBS = {
    "fit": (_fit, "config"),
    "preprocess": (_preprocess, "preprocess"),
    "evaluate": (_evaluate, "evaluate"),
    "ablate": (_ablate, "ablate"),
}


def _run_command(verb: str, args: list[str]) -> None:
    """The verbs with their own argument parser."""
    if verb == "plugins":
        from idvid.verbs.plugins import print_plugins

        print_plugins()
    elif verb == "sample":
        from idvid.verbs.sample import main as sample_main

        sample_main(args)
    elif verb == "animate":
        from idvid.verbs.animate import main as animate_main

        animate_main(args)
    else:
        from idvid.verbs.convert import main as convert_main

        convert_main(verb, args)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb, rest = args[0], args[1:]
    if os.environ.get("IDVID_TRACEBACK", "") not in ("", "0"):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # one switch for the kit's and Hydra's tracebacks
    with reported_as_user_errors(verb):
        plugin_verb = None if verb in VERBS else _plugin_verb(verb)
        if verb not in VERBS and plugin_verb is None:
            sys.exit(f"Unknown verb {verb!r}.\n\n{usage()}")
        if plugin_verb is not None:
            plugin_verb(rest)
        elif verb in HYDRA_VERBS:
            task, config_name = HYDRA_VERBS[verb]
            _run_hydra(task, verb, rest, config_name)
        else:
            _run_command(verb, rest)


def _plugin_verb(verb: str) -> Callable[[list[str]], None] | None:
    """The ``main(args)`` an installed plugin registered as ``verb``, or None."""
    from idvid.registry import REGISTRIES, PluginKind

    registry = REGISTRIES[PluginKind.VERB]
    clash = set(VERBS) & {e.name for e in registry.entries()}
    if clash:
        raise ConfigError(
            f"Plugin verbs {sorted(clash)} take the names of core verbs.",
            "Rename them in the plugin (register_verb) or uninstall the plugin.",
        )
    return registry.get(verb) if verb in registry else None
