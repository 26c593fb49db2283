"""Data: clip manifest, dataset and resumable sampler.

The datamodule (``idvid.data.datamodule``, which imports Lightning) is imported by its full name; the
bundled demo is ``idvid.demo``.
"""

from idvid.data.dataset import IdentityVideoDataset
from idvid.data.manifest import load_annotations, read_manifest, write_manifest
from idvid.data.sampler import ResumableRandomSampler

__all__ = [
    "IdentityVideoDataset",
    "ResumableRandomSampler",
    "load_annotations",
    "read_manifest",
    "write_manifest",
]
