"""Named registries for plugin kinds, and discovery through entry points.

A plugin is any class registered under a name in one of the registries below.
Third-party (and first-party) plugin packages announce themselves with an
entry point in the group ``idvid.plugins``; the entry point names a module (or
a callable) whose import registers its plugins with the decorators here::

    # pyproject.toml of a plugin package
    [project.entry-points."idvid.plugins"]
    my_method = "my_method_package"

    # my_method_package/__init__.py
    from idvid.registry import register_injector

    @register_injector("my_method.adapter")
    class MyInjector(TokenInjector): ...

The core never imports a plugin by name: configs refer to plugins by their
registered names, and ``build`` looks them up. Registering is storage only: this
module imports nothing of the kit, and the core's own plugins (``idvid.builtins``)
register through the core's own ``idvid.plugins`` entry point like any other.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, TypeVar

from idvid.errors import PLUGIN_ERROR_ATTRIBUTE, ConfigKeyError, UnknownNameError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "idvid.plugins"

T = TypeVar("T")


class PluginKind(str, Enum):
    BACKBONE = "backbone"
    INJECTOR = "injector"
    CONDITIONER = "conditioner"
    LOSS = "loss"
    FORMAT = "format"  # checkpoint formats for `convert` / `export`
    FACE_BACKEND = "face_backend"  # face detection + keypoints + identity embedding (`face=<name>`)
    DATASET_IMPORTER = "dataset_importer"  # annotated data sets -> manifest (`preprocess data.importer=<name>`)
    RECIPE_STEP = "recipe_step"  # training recipe steps (`recipe: {label: {name: <name>, ...}}`)
    NOISE_PRIOR = "noise_prior"  # sampling-time initial noise (`noise_prior=<name>`)
    METRIC = "metric"  # evaluation metrics (`evaluate metrics=[<name>, ...]`)
    VERB = "verb"  # command-line verbs a plugin adds (`python -m idvid <name> ...`)


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    source: str  # "idvid (core)", "<distribution name>", or a module name


class Registry:
    """Name -> plugin class for one plugin kind. Duplicate names are an error."""

    def __init__(self, kind: PluginKind):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any, source: str | None = None) -> Any:
        if name in self._entries:
            previous = self._entries[name]
            raise ValueError(
                f"{self.kind.value} plugin name {name!r} is already registered by {previous.source} "
                f"({previous.obj.__module__}.{previous.obj.__qualname__}); choose a different name, "
                f"e.g. prefix it with your package name."
            )
        self._entries[name] = Entry(name, obj, source or _source_of(obj))
        return obj

    def get(self, name: str) -> Any:
        load_plugins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(
                f"Unknown {self.kind.value} plugin {name!r}. Registered {self.kind.value} plugins: {known}. "
                f"Run `python -m idvid plugins` to see them with their sources; a plugin package must be "
                f"installed (pip install -e path/to/plugin) to be discovered."
            )
        return self._entries[name].obj

    def entries(self) -> list[Entry]:
        load_plugins()
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries


REGISTRIES: dict[PluginKind, Registry] = {kind: Registry(kind) for kind in PluginKind}


def _source_of(obj: Any) -> str:
    module = inspect.getmodule(obj)
    module_name = module.__name__ if module else "?"
    if module_name.split(".")[0] == "idvid":
        return "idvid (core)"
    top = module_name.split(".")[0]
    for dist_name, packages in _packages_to_distributions().items():
        if top in packages:
            return dist_name
    return module_name


@functools.cache  # scanning installed distributions costs ~0.2 s; do it once, not per plugin
def _packages_to_distributions() -> dict[str, list[str]]:
    mapping: dict[str, list[str]] = {}
    for package, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            mapping.setdefault(dist, []).append(package)
    return mapping


def _decorator(kind: PluginKind, name: str) -> Callable[[T], T]:
    def decorate(obj: T) -> T:
        REGISTRIES[kind].register(name, obj)
        setattr(obj, "plugin_name", name)
        return obj

    return decorate


def register_backbone(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.BACKBONE, name)


def register_injector(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.INJECTOR, name)


def register_conditioner(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.CONDITIONER, name)


def register_loss(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.LOSS, name)


def register_format(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.FORMAT, name)


def register_face_backend(name: str) -> Callable[[T], T]:
    return _decorator(PluginKind.FACE_BACKEND, name)


def register_dataset_importer(name: str) -> Callable[[T], T]:
    """An importer is a callable ``importer(source, out, analyzer, face, min_frames) -> summary dict``."""
    return _decorator(PluginKind.DATASET_IMPORTER, name)


def register_recipe_step(name: str) -> Callable[[T], T]:
    """A ``idvid.training.recipe.RecipeStep`` subclass, built from its recipe node's options."""
    return _decorator(PluginKind.RECIPE_STEP, name)


def register_noise_prior(name: str) -> Callable[[T], T]:
    """A class built from config options whose instance is called ``prior(shape, generator=...)``."""
    return _decorator(PluginKind.NOISE_PRIOR, name)


def register_metric(name: str) -> Callable[[T], T]:
    """An ``idvid.evaluation.metrics.Metric`` subclass."""
    return _decorator(PluginKind.METRIC, name)


def register_verb(name: str, summary: str) -> Callable[[T], T]:
    """A function ``main(args: list[str]) -> None`` run as ``python -m idvid <name> ARGS``.

    ``summary`` is its usage line in ``python -m idvid --help`` (arguments, then what it does). Verb names
    are not namespaced (users type them), so a plugin verb may not take a core verb's name.
    """

    def decorate(obj: T) -> T:
        REGISTRIES[PluginKind.VERB].register(name, obj)
        setattr(obj, "plugin_name", name)
        setattr(obj, "summary", summary)
        return obj

    return decorate


_plugins_loaded = False


def load_plugins() -> None:
    """Import every installed ``idvid.plugins`` entry point, the core's own included (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    # Set first: plugin modules call the registries (and so this function) while they import.
    _plugins_loaded = True
    try:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = entry_point.load()
            except Exception as error:
                raise ImportError(
                    f"Plugin entry point {entry_point.name!r} ({entry_point.value}) in group {ENTRY_POINT_GROUP!r} "
                    f"failed to import: {error}. Fix or uninstall that plugin package."
                ) from error
            if callable(loaded) and not inspect.ismodule(loaded):
                loaded()
            log.debug("loaded plugin entry point %s = %s", entry_point.name, entry_point.value)
    except BaseException:
        # A broken plugin must stay loud: the next lookup retries and raises again rather than
        # reporting an empty registry.
        _plugins_loaded = False
        raise


def build(kind: PluginKind | str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """Instantiate the plugin registered as ``name`` with keyword arguments from config.

    ``args`` are what the kit passes first, whatever the plugin names those parameters (an injector's
    or a conditioner's ``BackboneInfo``).

    Config keys that do not fit the plugin's parameters are a config error naming them; an error the
    plugin raises while it builds itself (a ``TypeError`` included) is the plugin's and propagates as is.
    """
    kind = PluginKind(kind)
    cls = REGISTRIES[kind].get(name)
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as error:
        params = ", ".join(p for p in inspect.signature(cls).parameters if p != "self")
        raise ConfigKeyError(
            f"Could not build {kind.value} plugin {name!r} ({cls.__qualname__}) from config keys "
            f"{sorted(kwargs)}: {error}.\nIts parameters are: {params}. Fix the keys of its config node."
        ) from None
    except ValueError:  # no signature to check (some builtins): let the call say what is wrong
        pass
    try:
        return cls(*args, **kwargs)
    except Exception as error:
        # The keys fit, so this is the plugin's own error: mark it, so that it is reported as the
        # plugin's (with its traceback) and not as a config node that does not fit its class.
        if not hasattr(error, PLUGIN_ERROR_ATTRIBUTE):
            setattr(
                error, PLUGIN_ERROR_ATTRIBUTE, f"{kind.value} plugin {name!r} ({cls.__module__}.{cls.__qualname__})"
            )
        raise
