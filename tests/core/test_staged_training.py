"""A later training stage: init_from adds in-block injectors to a checkpoint's model, and model.trainable may
list the injectors that alone train (the core side of staged methods such as MegActor-Sigma's)."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from torch import nn

from idvid.errors import ConfigError
from idvid.injection import TokenInjector
from idvid.interop import build_for_training, save_module
from idvid.registry import REGISTRIES, PluginKind, register_injector

from ..conftest import compose_config


@pytest.fixture
def residual_injector():
    name = "tests.staged_residual"

    @register_injector(name)
    class StagedResidual(TokenInjector):
        consumes = ()

        def __init__(self, backbone, site="post_attn", blocks="all"):
            super().__init__(backbone, site=site, blocks=blocks)
            self.proj = nn.Linear(backbone.hidden_size, backbone.hidden_size)

        def forward(self, block_index, hidden_states, prepared):
            return self.proj(hidden_states)

    yield name
    REGISTRIES[PluginKind.INJECTOR]._entries.pop(name, None)


def test_init_from_adds_an_injector_that_alone_trains(tmp_path, residual_injector):
    L.seed_everything(0)
    first = hydra.utils.instantiate(compose_config([]).model)  # no injectors
    save_module(first, tmp_path / "first.ckpt")
    added = [f"init_from={tmp_path / 'first.ckpt'}", f"+injectors.extra={{name: {residual_injector}}}"]
    second = build_for_training(compose_config([*added, "model.trainable=[extra]"]))
    assert list(second.plan.injectors) == ["extra"] and second.hparams.trainable == ["extra"]
    state = second.state_dict()
    assert all(torch.equal(state[key], value) for key, value in first.state_dict().items())  # the checkpoint's
    trains = {name for name, parameter in second.named_parameters() if parameter.requires_grad}
    assert trains == {"plan.injectors.extra.proj.weight", "plan.injectors.extra.proj.bias"}
    unknown = r"(?s)\['nope'\] are not labels of this plan's injectors.*`injectors:` \(extra\)"
    with pytest.raises(Exception, match=unknown):
        build_for_training(compose_config([*added, "model.trainable=[nope]"]))
    with pytest.raises(ConfigError, match="lists no injector"):
        build_for_training(compose_config([f"init_from={tmp_path / 'first.ckpt'}", "model.trainable=[]"]))
