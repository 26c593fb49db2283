"""Preprocessing: raw videos + captions -> a filtered training set in the manifest format.

The `preprocess` verb that drives it from config is `idvid.verbs.preprocess`.
"""

from idvid.preprocess.annotate import ClipSettings, MaskSettings
from idvid.preprocess.filters import FilterSettings
from idvid.preprocess.pipeline import Preprocessor, PreprocessSettings
from idvid.preprocess.tracking import TrackingSettings

__all__ = [
    "ClipSettings",
    "FilterSettings",
    "MaskSettings",
    "PreprocessSettings",
    "Preprocessor",
    "TrackingSettings",
]
