"""The plugin registries: names, lookups, entry-point discovery, building from config."""

from __future__ import annotations

import importlib.metadata
import uuid

import pytest
import torch

from idvid import registry as registry_module
from idvid.injection import InjectionPlan, InputConcatInjector, Site, TokenInjector
from idvid.randomness import BatchRandom
from idvid.registry import (
    ENTRY_POINT_GROUP,
    REGISTRIES,
    PluginKind,
    Registry,
    build,
    load_plugins,
    register_injector,
)

from .helpers import TINY_INFO

CONSISID_PLUGINS = {
    PluginKind.INJECTOR: {"consisid.global_face_latent", "consisid.local_face_cross_attention"},
    PluginKind.CONDITIONER: {"consisid.identity_features"},
}

INFO = TINY_INFO


class First(TokenInjector):
    pass


class Second(TokenInjector):
    pass


def test_duplicate_name_names_the_first_registrant():
    registry = Registry(PluginKind.INJECTOR)
    registry.register("lab.adapter", First, source="first-dist (first_module)")
    with pytest.raises(ValueError) as excinfo:
        registry.register("lab.adapter", Second, source="second-dist (second_module)")
    message = str(excinfo.value)
    assert "'lab.adapter'" in message
    assert "first-dist (first_module)" in message and f"{__name__}.First" in message
    assert "Second" not in message and "second-dist" not in message
    # The first registration stays in place.
    assert registry.get("lab.adapter") is First
    assert REGISTRIES[PluginKind.INJECTOR] is not registry and "lab.adapter" not in REGISTRIES[PluginKind.INJECTOR]


def test_default_source_of_a_non_idvid_class_is_its_module():
    registry = Registry(PluginKind.LOSS)
    registry.register("lab.loss", First)
    (entry,) = registry.entries()
    assert (entry.name, entry.obj, entry.source) == ("lab.loss", First, __name__)


def test_unknown_name_lists_the_registered_ones():
    registry = Registry(PluginKind.INJECTOR)
    registry.register("lab.b", Second, source="x")
    registry.register("lab.a", First, source="x")
    with pytest.raises(KeyError) as excinfo:
        registry.get("lab.c")
    message = excinfo.value.args[0]
    assert "Unknown injector plugin 'lab.c'" in message
    assert "Registered injector plugins: lab.a, lab.b." in message
    assert "python -m idvid plugins" in message


@pytest.mark.needs_plugin("idvid_consisid")
def test_unknown_name_in_the_global_registry_lists_the_plugin_packages_names():
    with pytest.raises(KeyError) as excinfo:
        REGISTRIES[PluginKind.INJECTOR].get("nope")
    message = excinfo.value.args[0]
    assert "Unknown injector plugin 'nope'" in message
    assert "consisid.global_face_latent" in message and "consisid.local_face_cross_attention" in message


def test_empty_registry_says_none():
    with pytest.raises(KeyError, match=r"Registered loss plugins: \(none\)"):
        Registry(PluginKind.LOSS).get("anything")


@pytest.mark.needs_plugin("idvid_consisid")
def test_load_plugins_discovers_the_consisid_distribution():
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "consisid" in entry_points
    assert entry_points["consisid"].value == "idvid_consisid"
    assert entry_points["consisid"].dist.name == "idvid-consisid"

    load_plugins()
    for kind, names in CONSISID_PLUGINS.items():
        entries = {entry.name: entry for entry in REGISTRIES[kind].entries()}
        assert names <= set(entries), (kind, sorted(entries))
        for name in names:
            assert entries[name].source == "idvid-consisid", entries[name].source
            assert entries[name].obj.__module__.startswith("idvid_consisid.")
            assert entries[name].obj.plugin_name == name
    # The core's own plugins are there too, marked as core.
    core = {(kind, e.name) for kind, r in REGISTRIES.items() for e in r.entries() if e.source == "idvid (core)"}
    assert {
        (PluginKind.BACKBONE, "cogvideox"),
        (PluginKind.LOSS, "weighted_mse"),
        (PluginKind.CONDITIONER, "reference_latents"),
    } <= core


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_broken_entry_point_fails_loudly(monkeypatch):
    load_plugins()  # the real plugins are loaded; a reload below re-imports nothing that registers

    class Broken:
        name, value = "broken", "no_such_idvid_plugin_module"

        def load(self):
            import no_such_idvid_plugin_module  # noqa: F401

    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        found = real(**kwargs)
        return [Broken(), *found] if kwargs.get("group") == ENTRY_POINT_GROUP else found

    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points", entry_points)
    with pytest.raises(ImportError, match=r"entry point 'broken' \(no_such_idvid_plugin_module\).*failed to import"):
        load_plugins()
    # The failure stays loud: a later lookup retries and raises again instead of an empty registry.
    with pytest.raises(ImportError, match="entry point 'broken'"):
        REGISTRIES[PluginKind.INJECTOR].get("consisid.global_face_latent")


@pytest.mark.needs_plugin("idvid_consisid")
def test_build_with_a_bad_keyword_names_the_plugin_and_its_parameters():
    with pytest.raises(TypeError) as excinfo:
        build(PluginKind.INJECTOR, "consisid.global_face_latent", backbone=INFO, use_kpss=True)
    message = str(excinfo.value)
    assert "injector plugin 'consisid.global_face_latent' (GlobalFaceLatent)" in message
    assert "['backbone', 'use_kpss']" in message
    assert "Its parameters are: backbone, use_kps." in message


@pytest.mark.needs_plugin("idvid_consisid")
def test_build_accepts_the_kind_as_a_string():
    injector = build("injector", "consisid.global_face_latent", backbone=INFO, use_kps=False)
    assert isinstance(injector, InputConcatInjector) and injector.use_kps is False


@pytest.fixture
def third_party_name(request):
    name = f"test_lab.tiny_{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: REGISTRIES[PluginKind.INJECTOR]._entries.pop(name, None))
    return name


def test_third_party_injector_registers_and_builds_into_a_plan(third_party_name):
    @register_injector(third_party_name)
    class TinyInjector(TokenInjector):
        consumes = ("signal",)

        def __init__(self, backbone, site=None, blocks="all", gain: float = 0.5):
            super().__init__(backbone, site=site, blocks=blocks)
            self.gain = gain
            self.proj = torch.nn.Linear(backbone.hidden_size, backbone.hidden_size)

        def forward(self, block_index, hidden_states, prepared):
            return self.gain * self.proj(hidden_states)

    assert TinyInjector.plugin_name == third_party_name
    assert third_party_name in REGISTRIES[PluginKind.INJECTOR]
    (entry,) = [e for e in REGISTRIES[PluginKind.INJECTOR].entries() if e.name == third_party_name]
    assert entry.obj is TinyInjector and entry.source == __name__

    plan = InjectionPlan.from_config({"x": {"name": third_party_name, "site": "post_attn", "blocks": [1]}}, INFO)
    (injector,) = plan.token_injectors
    assert plan.injectors["x"] is injector and type(injector) is TinyInjector
    assert injector.site is Site.POST_ATTN
    assert injector.block_indices == [1]
    assert injector.gain == 0.5 and injector.backbone_info == INFO
    assert plan.concat_injectors == [] and plan.extra_input_channels == 0
    assert plan.consumed_conditions() == {"signal": ["x"]}
    # Where it acts: only post_attn of block 1.
    assert plan.prepare({}, BatchRandom(torch.Generator())).sites_used() == {(Site.POST_ATTN, 1)}


def test_an_injectors_first_argument_is_the_backbone_info_whatever_its_name(third_party_name):
    """The contract fixes the first argument, not its name (issue 11: it had to be *named* `backbone`)."""

    @register_injector(third_party_name)
    class NamedItInfo(TokenInjector):
        def __init__(self, info, site=None, blocks="all"):
            super().__init__(info, site=site, blocks=blocks)
            self.width = info.hidden_size

    plan = InjectionPlan.from_config({"x": {"name": third_party_name, "site": "pre_attn"}}, INFO)
    assert plan.injectors["x"].width == INFO.hidden_size and plan.injectors["x"].backbone_info == INFO


def test_a_one_argument_prepare_is_refused_naming_the_contract(third_party_name):
    @register_injector(third_party_name)
    class OldPrepare(TokenInjector):
        def prepare(self, conditions):
            return None

    with pytest.raises(TypeError, match=r"prepare\(self, conditions, random\).*Add the `random` parameter"):
        InjectionPlan.from_config({"x": {"name": third_party_name}}, INFO)
