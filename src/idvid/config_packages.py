"""Where the verbs find their Hydra configs: the kit's own package plus every installed plugin's.

The kit's configs are the package ``idvid.conf`` (inside the installed package, so a regular
``pip install .`` finds them as well as an editable one). A plugin ships configs the same way: an
importable package holding config groups (``experiment/``, ``injector/``, ``conditioners/`` ...),
announced in the entry point group ``idvid.configs``::

    # pyproject.toml of a plugin package
    [project.entry-points."idvid.configs"]
    my_lab = "my_lab.conf"          # my_lab/conf/experiment/my_plan.yaml -> experiment=my_plan

Every such package goes on Hydra's search path as a ``pkg://`` source through the
``hydra.searchpath`` override, after the kit's own (on a name clash the kit's option wins). A Hydra
SearchPathPlugin is not used: Hydra discovers those by scanning the ``hydra_plugins`` namespace
package, which a default (editable) ``pip install -e .`` does not expose.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from idvid.errors import UserError

ENTRY_POINT_GROUP = "idvid.configs"
KIT_CONFIG_PACKAGE = "idvid.conf"
SEARCHPATH_KEY = "hydra.searchpath"


@dataclass(frozen=True)
class ConfigPackage:
    name: str  # the entry point's name
    package: str  # importable package holding config groups, e.g. "my_lab.conf"
    source: str  # the distribution that announced it ("idvid" for the kit's own)

    @property
    def search_path(self) -> str:
        return f"pkg://{self.package}"

    def groups(self) -> dict[str, list[str]]:
        """{group folder: option names} of this package (top-level .yaml files under the key "")."""
        root = importlib.resources.files(self.package)
        found: dict[str, list[str]] = {}
        for child in sorted(root.iterdir(), key=lambda c: c.name):
            if child.is_dir() and not child.name.startswith(("_", ".")):
                options = sorted(Path(f.name).stem for f in child.iterdir() if f.name.endswith(".yaml"))
                if options:
                    found[child.name] = options
            elif child.name.endswith(".yaml"):
                found.setdefault("", []).append(Path(child.name).stem)
        return found


KIT_CONFIGS = ConfigPackage("idvid", KIT_CONFIG_PACKAGE, "idvid")


def plugin_config_packages() -> list[ConfigPackage]:
    """Every installed ``idvid.configs`` entry point, by name; one naming a missing package is an error."""
    packages = []
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        source = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        if importlib.util.find_spec(entry_point.value) is None:
            raise UserError(
                f"The {ENTRY_POINT_GROUP!r} entry point {entry_point.name!r} of {source} names the package "
                f"{entry_point.value!r}, which cannot be imported.",
                f"Give it an __init__.py and list its .yaml files as package data, or reinstall {source}.",
            )
        packages.append(ConfigPackage(entry_point.name, entry_point.value, source))
    return packages


def all_config_packages() -> list[ConfigPackage]:
    """The kit's configs first, then the plugins' (the order Hydra searches them in)."""
    return [KIT_CONFIGS, *plugin_config_packages()]


def with_plugin_search_path(overrides: list[str]) -> list[str]:
    """``overrides`` plus one ``hydra.searchpath`` override listing every plugin config package.

    A ``hydra.searchpath=[...]`` the user gives is kept: its entries come after the plugins'.
    """
    user_paths: list[str] = []
    rest = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == SEARCHPATH_KEY and "=" in override:
            user_paths += _parse_list(override.split("=", 1)[1])
        else:
            rest.append(override)
    paths = [package.search_path for package in plugin_config_packages()] + user_paths
    if not paths:
        return rest
    quoted = ",".join(f"'{path}'" for path in paths)
    # Beside the other overrides: Hydra's argument parser takes its overrides as one run of
    # positional arguments, so one appended after a flag (`--cfg job`) would be refused.
    first = next((i for i, arg in enumerate(rest) if "=" in arg and not arg.startswith("-")), len(rest))
    return [*rest[:first], f"{SEARCHPATH_KEY}=[{quoted}]", *rest[first:]]


def _parse_list(value: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"{SEARCHPATH_KEY}={value}").value()
    return [str(item) for item in (parsed if isinstance(parsed, list) else [parsed])]


def compose(config_name: str, overrides: list[str], return_hydra_config: bool = False):
    """Compose ``config_name`` (e.g. "config", the root of `fit`) with the kit's and the plugins' configs.

    For library callers (``convert``, tests); the verbs compose through ``hydra.main`` in ``idvid.cli``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from idvid.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=KIT_CONFIG_PACKAGE, version_base="1.3"):
        return hydra_compose(
            config_name, overrides=with_plugin_search_path(overrides), return_hydra_config=return_hydra_config
        )


def check_config_choices(overrides: list[str]) -> None:
    """Refuse a ``group=option`` override that no config package has, naming the plugin that ships it.

    Hydra's own answer ("Could not find 'experiment/x'") does not say that the option comes from a
    plugin that is not installed; a plugin folder next to the kit (``plugins/*``, as in the kit's
    repository) or in the current directory that has the option is named with its install command.
    """
    options: dict[str, set[str]] = {}
    for package in all_config_packages():
        for group, names in package.groups().items():
            if group:
                options.setdefault(group, set()).update(names)
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+")
        if key not in options or value in options[key] or value in ("", "null") or any(c in value for c in ",[]()${}*"):
            continue
        plugins = _plugin_folders_shipping(key, value)
        if plugins:
            where = _relative(plugins[0])
            fix = f"It is shipped by the plugin in {where}, which is not installed: pip install -e {where}"
        else:
            fix = (
                f"Options for {key}: {', '.join(sorted(options[key]))}. A plugin's options appear once the plugin "
                f"is installed; `python -m idvid plugins` lists the installed config packages."
            )
        raise UserError(f"{key}={value}: no installed config package has {key}/{value}.yaml.", fix)


def _plugin_folders_shipping(group: str, option: str) -> list[Path]:
    roots = {Path.cwd() / "plugins", Path(__file__).resolve().parents[2] / "plugins"}
    found = []
    for root in sorted(roots):
        if not root.is_dir():
            continue
        for plugin in sorted(p for p in root.iterdir() if (p / "pyproject.toml").is_file()):
            if next(plugin.glob(f"**/conf/{group}/{option}.yaml"), None) is not None:
                found.append(plugin)
    return found


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
