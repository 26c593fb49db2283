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
from idvid.errors import UserError
from idvid.randomness import BatchRandom

#: the batch entries that exist at sampling time (``idvid.verbs.sample.reference_batch``): the
#: reference's, and the prompt. A conditioner that reads anything else runs in training only.
SAMPLING_BATCH_KEYS = ("ref_image", "ref_kps_image", "ref_embedding", "ref_kps", "ref_landmarks", "ref_box", "caption")


class Conditioner(nn.Module):
    #: names of the conditions this conditioner returns
    produces: tuple[str, ...] = ()
    #: the local folder its weights came from, if any; checkpoints leave such weights out
    pretrained: str | None = None
    #: batch entries that fully determine the output (no randomness used): when set, training may
    #: cache the output per sample, keyed by these entries' content (idvid.training.feature_cache)
    deterministic_inputs: tuple[str, ...] = ()
    #: batch entries it needs. Only a conditioner whose ``reads`` all exist at sampling time
    #: (``SAMPLING_BATCH_KEYS``) can run in ``sample``; ``sample`` refuses the others by name.
    reads: tuple[str, ...] = ()
    #: True: it runs in the training graph (gradients flow through it) and its parameters train with the plan
    #: (``model.trainable`` all, injectors or lora); False: a frozen feature extractor, run under ``no_grad``
    trainable: bool = False
    #: for a conditioner that reads ``audio_mel``: the window it takes, in mel frames (a Whisper encoder: its
    #: ``max_source_positions`` x 2); ``animate`` builds the window it reads (None: the conditioner does not say)
    audio_mel_frames: int | None = None

    def __init__(self, backbone: BackboneInfo):
        super().__init__()
        self.backbone_info = backbone

    def attach(self, backbone: nn.Module) -> None:
        """Called once with the built backbone (its input layer already widened), before a checkpoint's weights
        load into the model: a conditioner that owns modules made from the backbone's (e.g. a trainable copy of
        its transformer) makes them here, so that they are saved and loaded with the model."""

    def forward(self, batch: Mapping[str, Any], backbone: nn.Module, random: BatchRandom) -> dict[str, Any]:
        """Conditions for the batch. Draw any randomness through ``random`` (see idvid.randomness)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch, backbone, random)")


def check_sampling_inputs(conditioners: Mapping[str, Conditioner], batch: Mapping[str, Any]) -> None:
    """Refuse conditioners that need batch entries a sampling batch does not have, naming them."""
    refused = {
        label: [key for key in conditioner.reads if key not in batch] for label, conditioner in conditioners.items()
    }
    refused = {label: keys for label, keys in refused.items() if keys}
    if refused:
        lines = "\n".join(
            f"  - {label} ({type(conditioners[label]).__name__}) reads {keys}" for label, keys in refused.items()
        )
        raise UserError(
            f"These conditioners cannot run at sampling time: they need batch entries that only training data has:\n"
            f"{lines}\nAt sampling time the batch holds only {sorted(batch)}.",
            "Sample with a model whose conditioners read only the reference's entries (e.g. face_embedding, "
            "reference_latents), or make the conditioner derive what it needs from those.",
        )


def run_conditioners(
    conditioners: Mapping[str, Conditioner],
    batch: Mapping[str, Any],
    backbone: nn.Module,
    random: BatchRandom,
    cache: Any = None,
) -> dict[str, Any]:
    """Every conditioner's conditions; `cache` (a FeatureCache) serves the frozen ones with deterministic_inputs.

    Frozen conditioners run under ``no_grad``; ``trainable`` ones record a graph when gradients are enabled."""
    conditions: dict[str, Any] = {}
    grad = torch.is_grad_enabled()  # sampling and validation run under no_grad: then no conditioner records a graph
    for label, conditioner in conditioners.items():
        with torch.set_grad_enabled(grad and conditioner.trainable):
            if cache is not None and conditioner.deterministic_inputs and not conditioner.trainable:
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
    """Repeat a condition along the batch axis (tensors, and lists/tuples/mappings of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, Mapping):  # e.g. per-block features {block index: tensor}
        return {key: repeat_batch(v, times) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(repeat_batch(v, times) for v in value)
    return value
