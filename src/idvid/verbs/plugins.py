"""`python -m idvid plugins`: the injection sites, every registered plugin, and every config package."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from idvid.config_packages import all_config_packages
from idvid.injection.injector import Injector, TokenInjector
from idvid.injection.sites import Site
from idvid.registry import REGISTRIES, PluginKind


def _describe(kind: PluginKind, obj: type) -> tuple[str, str, str]:
    """(site, consumes, produces) columns for one plugin class."""
    site = consumes = produces = "-"
    if kind is PluginKind.INJECTOR and issubclass(obj, Injector):
        site = obj.default_site.value
        if issubclass(obj, TokenInjector):
            site += " (default; configurable)"
        consumes = ", ".join(obj.consumes) or "-"
    produces = ", ".join(getattr(obj, "produces", ())) or "-"
    return site, consumes, produces


def print_plugins() -> None:
    console = Console(width=160)
    sites = Table(title="Injection sites", show_lines=False)
    sites.add_column("site")
    sites.add_column("where")
    for site in Site:
        sites.add_row(site.value, site.description)
    console.print(sites)

    # Where each site is in each registered backbone's block (the adapters' own words).
    backbones = [e for e in REGISTRIES[PluginKind.BACKBONE].entries() if getattr(e.obj, "site_locations", None)]
    if backbones:
        mapping = Table(title="Sites in each backbone's block")
        mapping.add_column("site")
        for entry in backbones:
            mapping.add_column(entry.name, overflow="fold")
        for site in Site:
            mapping.add_row(site.value, *(entry.obj.site_locations.get(site.value, "-") for entry in backbones))
        console.print(mapping)

    plugins = Table(title="Registered plugins")
    for column in ("kind", "name", "site", "consumes", "produces", "source"):
        plugins.add_column(column, no_wrap=column == "name", overflow="fold")
    for kind, registry in REGISTRIES.items():
        for entry in registry.entries():
            plugins.add_row(kind.value, entry.name, *_describe(kind, entry.obj), entry.source)
    console.print(plugins)

    configs = Table(title="Config packages (Hydra groups: pick an option with group=option)")
    for column in ("package", "source", "group", "options"):
        configs.add_column(column, overflow="fold")
    for package in all_config_packages():
        for group, options in package.groups().items():
            configs.add_row(package.package, package.source, group or "(root configs)", ", ".join(options))
    console.print(configs)
