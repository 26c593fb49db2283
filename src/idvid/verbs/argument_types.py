"""Start-up check of the scalar config values handed to classes built from ``_target_`` nodes
(``fit``) or to settings dataclasses (``preprocess``).

``trainer.max_steps=abc`` would otherwise reach Lightning as a string and fail deep inside it
(``'<' not supported between instances of 'str' and 'int'``). The expected types are read from the
annotations of the class each node builds (``lightning.Trainer``, the datamodule, each callback and
logger), so a new argument, or a user's own class, is checked with no table to keep up to date.
Only arguments whose annotation accepts nothing but numbers, booleans and ``None`` are checked: for
anything else (a string choice, a path, an object) the class itself is the judge.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from idvid.errors import ConfigTypeError

SCALAR_NAMES = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def _accepted_scalars(annotation: Any) -> tuple[type, ...] | None:
    """The scalar types ``annotation`` accepts, or None when it accepts anything else too."""
    if annotation in SCALAR_NAMES:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if all(member in SCALAR_NAMES for member in members):
            return members
    return None


def _fits(value: Any, accepted: tuple[type, ...]) -> bool:
    # bool is an int to Python, but `max_steps=true` is a mistake, not the step count 1.
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int):
        return int in accepted or float in accepted
    if isinstance(value, float):
        return float in accepted
    return value is None and type(None) in accepted


def _expected_types(built: Any) -> dict[str, tuple[type, ...]]:
    """argument -> accepted scalar types, for the arguments of the class (or function) ``built`` taking only scalars."""
    try:
        hints = typing.get_type_hints(built.__init__ if inspect.isclass(built) else built)
    except Exception:  # annotations that cannot be resolved: nothing to check against
        return {}
    expected = {}
    for name, annotation in hints.items():
        accepted = _accepted_scalars(annotation) if name != "return" else None
        if accepted is not None:
            expected[name] = accepted
    return expected


def _target_nodes(cfg: DictConfig, roots: tuple[str, ...]) -> list[tuple[str, DictConfig]]:
    """(dotted key, node) of each root that has a ``_target_``, and of each such node one level below it."""
    nodes = []
    for root in roots:
        node = cfg.get(root)
        if not isinstance(node, DictConfig):
            continue
        if "_target_" in node:
            nodes.append((root, node))
        else:  # a mapping of nodes: callbacks.<name>, logger.<name>
            nodes += [(f"{root}.{key}", child) for key, child in node.items() if isinstance(child, DictConfig)]
    return [(key, node) for key, node in nodes if "_target_" in node]


def value_problems(node: Mapping[str, Any], built: Any, key: str, owner: str | None = None) -> list[str]:
    """One line per value of ``node`` (config key ``key``) whose type the arguments of ``built`` do not take."""
    owner = owner or f"{built.__module__}.{built.__qualname__}"
    problems = []
    for name, accepted in _expected_types(built).items():
        if name not in node:
            continue
        try:
            value = node[name]
        except Exception:  # an interpolation that cannot resolve yet: reported where it is used
            continue
        if not _fits(value, accepted):
            problems.append(
                f"{key}.{name}={value!r} ({type(value).__name__}): {owner} expects {_describe(accepted)}; "
                f"e.g. {key}.{name}={_example(accepted)}"
            )
    return problems


def raise_for(problems: list[str]) -> None:
    if problems:
        raise ConfigTypeError(
            "Config value(s) of the wrong type:\n" + "\n".join(f"- {problem}" for problem in problems),
            "Fix these overrides (quoted values like '3' are strings to Hydra; write 3).",
        )


# The config nodes of `fit` built from a `_target_` (each callback and logger is a node of its own).
FIT_ROOTS = ("trainer", "data", "model", "optimizer", "callbacks", "logger")


def check_argument_types(cfg: DictConfig, roots: tuple[str, ...] = FIT_ROOTS) -> None:
    """Raise ConfigTypeError naming every scalar value under ``roots`` whose type the built class does not take."""
    from hydra.utils import get_object

    problems = []
    for key, node in _target_nodes(cfg, roots):
        try:
            built = get_object(str(node["_target_"]))
        except Exception:  # an unknown target: Hydra names it when it builds the node
            continue
        problems += value_problems(node, built, key, owner=str(node["_target_"]))
    raise_for(problems)


def check_setting_types(cfg: Mapping[str, Any], settings: Mapping[str, type]) -> None:
    """Raise ConfigTypeError for the values of ``cfg[key]`` that the dataclass ``settings[key]`` does not take."""
    problems = []
    for key, dataclass in settings.items():
        if isinstance(cfg.get(key), Mapping):
            problems += value_problems(cfg[key], dataclass, key)
    raise_for(problems)


def _describe(accepted: tuple[type, ...]) -> str:
    """ "a number or null": in a fixed order, and an integer is a number too."""
    kinds = [kind for kind in SCALAR_NAMES if kind in accepted and not (kind is int and float in accepted)]
    return " or ".join(SCALAR_NAMES[kind] for kind in kinds)


def _example(accepted: tuple[type, ...]) -> str:
    for kind, example in ((int, "10"), (float, "1.0"), (bool, "true"), (type(None), "null")):
        if kind in accepted:
            return example
    return "null"


def check_types_against_defaults(cfg: DictConfig, defaults: Mapping[str, Any], prefix: str = "") -> None:
    """Raise ConfigTypeError for values whose shipped default is a number but that are not a number (or null).

    For the verbs whose settings are plain mappings (``evaluate``, ``ablate``): there is no class to
    read the types from, so the shipped config says what each setting is. ``defaults`` is that config
    as a plain container, interpolations unresolved (they are strings, and not checked).
    """
    raise_for(_number_problems(cfg, defaults, prefix))


def _number_problems(cfg: Any, defaults: Mapping[str, Any], prefix: str) -> list[str]:
    problems = []
    for key, default in defaults.items():
        if not isinstance(cfg, (DictConfig, Mapping)) or key not in cfg:
            continue
        if isinstance(default, Mapping):
            try:
                problems += _number_problems(cfg[key], default, f"{prefix}{key}.")
            except Exception:  # a node that cannot resolve: reported where it is used
                continue
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                value = cfg[key]
            except Exception:
                continue
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(
                    f"{prefix}{key}={value!r} ({type(value).__name__}): expects a number, like its default "
                    f"{prefix}{key}={default}"
                )
    return problems
