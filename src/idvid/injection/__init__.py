"""The site contract: where identity signals enter a backbone, and the injector base classes."""

from idvid.injection.attention_exclusion import AttentionExclusion
from idvid.injection.injector import Conditions, Injector, InputConcatInjector, TextTokenInjector, TokenInjector
from idvid.injection.plan import NO_INJECTION, InjectionPlan, PreparedInjection
from idvid.injection.sequence import (
    PreparedReference,
    ReferenceAttention,
    ReferencePositions,
    SequenceConcatInjector,
)
from idvid.injection.sites import BLOCK_SITES, SITE_DESCRIPTIONS, BlockSelection, Site, parse_site

__all__ = [
    "AttentionExclusion",
    "BLOCK_SITES",
    "SITE_DESCRIPTIONS",
    "BlockSelection",
    "Conditions",
    "InjectionPlan",
    "Injector",
    "InputConcatInjector",
    "NO_INJECTION",
    "PreparedInjection",
    "PreparedReference",
    "ReferenceAttention",
    "ReferencePositions",
    "SequenceConcatInjector",
    "Site",
    "TextTokenInjector",
    "TokenInjector",
    "parse_site",
]
