"""An injection plan: the set of injectors a run installs on a backbone.

A plan is built from config (a mapping ``label -> {name: <registered injector>, ...}``)
and is the only object the backbone sees. It checks up front that every condition
an injector consumes is produced by some conditioner, so a bad plan fails at
start-up with a message instead of a shape error mid-run.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from idvid.backbones.info import BackboneInfo
from idvid.errors import ConfigError
from idvid.injection.attention_exclusion import AttentionExclusion
from idvid.injection.injector import Conditions, Injector, InputConcatInjector, TextTokenInjector, TokenInjector
from idvid.injection.sequence import (
    PreparedReference,
    SequenceConcatInjector,
    check_reference,
    check_reference_latent_size,
)
from idvid.injection.sites import BLOCK_SITES, Site
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build

#: ``(injector, prepared state) -> state``: how a training recipe may change what an injector prepared
StateAdjustment = Callable[[TokenInjector, Any], Any]


class InjectionPlan(nn.Module):
    def __init__(self, injectors: Mapping[str, Injector]):
        super().__init__()
        for label, injector in injectors.items():
            if not isinstance(
                injector, (InputConcatInjector, TokenInjector, TextTokenInjector, SequenceConcatInjector)
            ):
                raise TypeError(
                    f"Injector {label!r} is a {type(injector).__name__}; injectors must derive from "
                    f"idvid.injection.InputConcatInjector, TokenInjector, TextTokenInjector or SequenceConcatInjector."
                )
            if isinstance(injector, TokenInjector):
                _check_prepare_signature(label, injector)
        references = [label for label, i in injectors.items() if isinstance(i, SequenceConcatInjector)]
        if len(references) > 1:
            raise ConfigError(
                f"Injectors {', '.join(references)} all append reference tokens (site sequence_concat); a plan "
                "holds one reference sequence.",
                "Keep one sequence_concat injector (set the others to null, e.g. "
                f"injectors.{references[-1]}=null), or have one injector return all references as one sequence.",
            )
        self.injectors = nn.ModuleDict(dict(injectors))
        # Coarse-to-fine training switches the in-block (high-frequency) path off for a while.
        self.in_block_enabled = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, backbone: BackboneInfo) -> "InjectionPlan":
        injectors = {}
        for label, node in (config or {}).items():
            if node is None:  # an experiment may switch an injector off with `label: null`
                continue
            node = dict(node)
            if "name" not in node:
                raise ValueError(
                    f"Injector {label!r} has no `name`; set it to a registered injector "
                    f"(see `python -m idvid plugins`)."
                )
            name = node.pop("name")
            # Positional: the contract fixes the first argument, not its name.
            injectors[label] = build(PluginKind.INJECTOR, name, backbone, **node)
        return cls(injectors)

    # ----------------------------------------------------------------- queries
    @property
    def concat_injectors(self) -> list[InputConcatInjector]:
        return [i for i in self.injectors.values() if isinstance(i, InputConcatInjector)]

    @property
    def token_injectors(self) -> list[TokenInjector]:
        return [i for i in self.injectors.values() if isinstance(i, TokenInjector)]

    @property
    def text_token_injectors(self) -> list[TextTokenInjector]:
        return [i for i in self.injectors.values() if isinstance(i, TextTokenInjector)]

    @property
    def sequence_injector(self) -> SequenceConcatInjector | None:
        """The plan's ``sequence_concat`` injector (at most one), or None."""
        return next((i for i in self.injectors.values() if isinstance(i, SequenceConcatInjector)), None)

    def check_backbone(self, backbone: Any) -> None:
        """Refuse a ``sequence_concat`` injector whose attention policy the backbone cannot honour."""
        injector = self.sequence_injector
        if injector is None:
            return
        supported = tuple(getattr(backbone, "reference_attention", ()))
        if injector.attention.value not in supported:
            fix = (
                "Use attention=full, or a backbone whose adapter can isolate the reference "
                "(`python -m idvid plugins` shows each backbone's sites)."
                if supported
                else "Use a backbone whose adapter implements sequence_concat "
                "(`python -m idvid plugins` shows each backbone's sites)."
            )
            raise ConfigError(
                f"{type(injector).__name__} asks for attention={injector.attention.value}, but the "
                f"{type(backbone).__name__} backbone "
                + (
                    f"can only run {', '.join(supported)} attention with reference tokens (it cannot mask them)."
                    if supported
                    else "does not implement the sequence_concat site (reference tokens)."
                ),
                fix,
            )

    def check_reference_image_size(self, height: int, width: int) -> None:
        """At start-up: refuse reference images of ``height x width`` pixels whose latent the patching cannot tile."""
        injector = self.sequence_injector
        if injector is not None:
            info = injector.backbone_info
            compression = info.vae_spatial_compression
            check_reference_latent_size(injector, info, info.patch_size_t, height // compression, width // compression)

    def attach(self, backbone: Any) -> None:
        """Let each ``text_tokens`` injector install its tokens on the built backbone (once)."""
        for injector in self.text_token_injectors:
            injector.attach(backbone)

    @property
    def extra_input_channels(self) -> int:
        return sum(i.channels for i in self.concat_injectors)

    def consumed_conditions(self) -> dict[str, list[str]]:
        """condition name -> labels of the injectors that consume it."""
        consumed: dict[str, list[str]] = {}
        for label, injector in self.injectors.items():
            for condition in injector.consumes:
                consumed.setdefault(condition, []).append(label)
        return consumed

    @staticmethod
    def produced_conditions(conditioners: Mapping[str, Any]) -> dict[str, str]:
        """condition name -> label of the conditioner that produces it; refuses two producers of one condition.

        Conditions are merged into one mapping when a batch runs, so a second producer would silently
        replace the first one's output.
        """
        produced: dict[str, str] = {}
        clashes: dict[str, list[str]] = {}
        for label, conditioner in conditioners.items():
            for condition in conditioner.produces:
                if condition in produced:
                    clashes.setdefault(condition, [produced[condition]]).append(label)
                else:
                    produced[condition] = label
        if clashes:
            lines = [f"  - {c!r}, produced by conditioners {', '.join(labels)}" for c, labels in clashes.items()]
            raise ConfigError(
                "Several conditioners produce the same condition, so one would silently replace the other's:\n"
                + "\n".join(lines),
                "Keep one producer of each condition under `conditioners:` (set the other to null, e.g. "
                f"conditioners.{next(iter(clashes.values()))[-1]}=null), or make one of them produce a differently "
                "named condition.",
            )
        return produced

    def check_conditions(self, produced: Mapping[str, str]) -> None:
        """Refuse a plan whose injectors need conditions that no conditioner produces.

        ``produced`` maps condition name -> label of the conditioner that produces it.
        """
        missing = {c: users for c, users in self.consumed_conditions().items() if c not in produced}
        if missing:
            lines = [f"  - {c!r}, needed by injector(s) {', '.join(users)}" for c, users in missing.items()]
            available = ", ".join(f"{c} (from {p})" for c, p in sorted(produced.items())) or "none"
            raise ConfigError(
                "This plan's injectors consume conditions that no conditioner produces:\n"
                + "\n".join(lines)
                + f"\nProduced conditions: {available}.\nAdd a conditioner that produces them under "
                "`conditioners:` in the config, or remove the injector."
            )

    # ----------------------------------------------------------------- running
    def concat_latents(self, conditions: Conditions, noisy_latents: torch.Tensor) -> torch.Tensor | None:
        """Extra input channels of all ``input_concat`` injectors, in plan order, or None."""
        parts = []
        for injector in self.concat_injectors:
            extra = injector.concat_latents(conditions, noisy_latents)
            expected = (*noisy_latents.shape[:2], injector.channels, *noisy_latents.shape[3:])
            if tuple(extra.shape) != expected:
                raise ValueError(
                    f"{type(injector).__name__} returned input channels of shape {tuple(extra.shape)}; "
                    f"expected {expected} (batch, frames, its {injector.channels} channels, height, width)."
                )
            parts.append(extra)
        return torch.cat(parts, dim=2) if parts else None

    def prepare(
        self, conditions: Conditions, random: BatchRandom, adjust_state: StateAdjustment | None = None
    ) -> "PreparedInjection":
        """Run each in-block injector's timestep-independent part once.

        ``random`` is the step's (or the sampling run's) random source; ``adjust_state`` lets the
        training recipe change a prepared state (e.g. drop identity tokens) before the blocks see it.
        """
        active = self.token_injectors if self.in_block_enabled else []
        prepared = []
        for injector in active:
            state = injector.prepare(conditions, random)
            prepared.append((injector, adjust_state(injector, state) if adjust_state else state))
        reference = None
        if self.sequence_injector is not None:
            injector = self.sequence_injector
            value = injector.reference(conditions, random)
            check_reference(injector, value, injector.backbone_info)
            reference = PreparedReference(injector, value)
        return PreparedInjection(prepared, reference=reference)


def _check_prepare_signature(label: str, injector: TokenInjector) -> None:
    try:
        inspect.signature(injector.prepare).bind({}, None)
    except TypeError:
        raise TypeError(
            f"Injector {label!r} ({type(injector).__name__}) defines prepare{inspect.signature(injector.prepare)}; "
            f"the contract is prepare(self, conditions, random): `random` is an idvid.randomness.BatchRandom "
            f"to draw any randomness through. Add the `random` parameter."
        ) from None


class PreparedInjection:
    """What a backbone calls at each site of each block while it runs.

    ``token_grid`` is ``(frames, height, width)`` of the video tokens, in tokens: the backbone sets it
    for each forward (``with_token_grid``), and injectors that declare ``reads_token_grid`` get it, so
    that they can regroup ``[B, N, D]`` video tokens by frame or by position.

    ``attention_exclusion`` (``idvid.injection.attention_exclusion``), set by the training module from the
    batch: video query tokens of one region that may not attend to video key tokens of another in the
    blocks' self-attention.
    """

    def __init__(
        self,
        prepared: list[tuple[TokenInjector, Any]],
        token_grid: tuple[int, int, int] | None = None,
        reference: PreparedReference | None = None,
        attention_exclusion: AttentionExclusion | None = None,
    ):
        self._prepared = prepared
        self.token_grid = token_grid
        #: the reference tokens' source (site sequence_concat), or None
        self.reference = reference
        #: the video self-attention exclusion of this forward, or None
        self.attention_exclusion = attention_exclusion
        self._by_site_block: dict[tuple[Site, int], list[tuple[TokenInjector, Any]]] = {}
        for injector, state in prepared:
            for block_index in injector.block_indices:
                self._by_site_block.setdefault((injector.site, block_index), []).append((injector, state))

    def with_token_grid(self, token_grid: tuple[int, int, int]) -> "PreparedInjection":
        """The same prepared states, for video tokens laid out as ``token_grid`` (a new object: the
        prepared injection of a sampling run is shared by all its steps)."""
        grid = tuple(int(n) for n in token_grid)
        return PreparedInjection(self._prepared, grid, self.reference, self.attention_exclusion)

    def with_reference(self, reference: PreparedReference | None) -> "PreparedInjection":
        """The same in-block states with another reference (e.g. one whose keys and values are cached)."""
        return PreparedInjection(self._prepared, self.token_grid, reference, self.attention_exclusion)

    def with_attention_exclusion(self, exclusion: AttentionExclusion | None) -> "PreparedInjection":
        """The same injection with a video self-attention exclusion (None: none)."""
        return PreparedInjection(self._prepared, self.token_grid, self.reference, exclusion)

    def apply(self, site: Site, block_index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        entries = self._by_site_block.get((site, block_index))
        if not entries:
            return hidden_states
        # Every injector at one site sees the same input; their residuals add up (order-independent).
        residual = sum(self._call(injector, block_index, hidden_states, state) for injector, state in entries)
        return hidden_states + residual

    def _call(self, injector: TokenInjector, block_index: int, hidden_states: torch.Tensor, state: Any):
        if not injector.reads_token_grid:
            return injector(block_index, hidden_states, state)
        frames, height, width = self.token_grid or (0, 0, 0)
        if frames * height * width != hidden_states.shape[1]:
            raise ValueError(
                f"{type(injector).__name__} reads the video-token grid, but the backbone gave "
                f"{self.token_grid} for {hidden_states.shape[1]} video tokens; a backbone's forward must call "
                "injection.with_token_grid((frames, height, width)) with its video tokens' layout."
            )
        return injector(block_index, hidden_states, state, token_grid=self.token_grid)

    def sites_used(self) -> set[tuple[Site, int]]:
        return set(self._by_site_block)


NO_INJECTION = PreparedInjection([])

__all__ = ["InjectionPlan", "PreparedInjection", "NO_INJECTION", "BLOCK_SITES"]
