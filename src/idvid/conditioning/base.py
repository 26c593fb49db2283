"""The conditioner contract.

A conditioner reads batch entries and returns named conditions (``face_latent``,
``id_cond``, ...). Injectors consume conditions by name; neither side knows the
other. Conditioners are frozen feature extractors unless they say otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from idvid.backbones.info import BackboneInfo
from idvid.randomness import BatchRandom


class Conditioner(nn.Module):
    #: names of the conditions this conditioner returns
    produces: tuple[str, ...] = ()
    #: the local folder its weights came from, if any; checkpoints leave such weights out
    pretrained: str | None = None
    #: batch entries that fully determine the output (no randomness used): when set, training may
    #: cache the output per sample, keyed by these entries' content (idvid.training.feature_cache)
    deterministic_inputs: tuple[str, ...] = ()

    def __init__(self, backbone: BackboneInfo):
        super().__init__()
        self.backbone_info = backbone

    def forward(self, batch: Mapping[str, Any], backbone: nn.Module, random: BatchRandom) -> dict[str, Any]:
        """Conditions for the batch. Draw any randomness through ``random`` (see idvid.randomness)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch, backbone, random)")


def run_conditioners(
    conditioners: Mapping[str, Conditioner],
    batch: Mapping[str, Any],
    backbone: nn.Module,
    random: BatchRandom,
    cache: Any = None,
) -> dict[str, Any]:
    """Every conditioner's conditions; `cache` (a FeatureCache) serves those with deterministic_inputs."""
    conditions: dict[str, Any] = {}
    for label, conditioner in conditioners.items():
        if cache is not None and conditioner.deterministic_inputs:
            produced = cache.conditions(conditioner, batch, backbone, random)
        else:
            produced = conditioner(batch, backbone, random)
        unexpected = set(produced) - set(conditioner.produces)
        if unexpected:
            raise ValueError(
                f"Conditioner {label!r} returned {sorted(unexpected)}, which it does not declare in `produces` "
                f"{list(conditioner.produces)}; declare every condition it returns."
            )
        conditions.update(produced)
    return conditions


def repeat_batch(value: Any, times: int) -> Any:
    """Repeat a condition along the batch axis (tensors, and lists/tuples of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, (list, tuple)):
        return type(value)(repeat_batch(v, times) for v in value)
    return value
