"""Data: clip manifest, bundled demo builder, dataset, resumable sampler and datamodule."""

from idvid.data.dataset import IdentityVideoDataset
from idvid.data.demo import build_demo
from idvid.data.manifest import load_annotations, read_manifest, write_manifest
from idvid.data.sampler import ResumableRandomSampler

__all__ = [
    "IdentityVideoDataModule",
    "IdentityVideoDataset",
    "ResumableRandomSampler",
    "build_demo",
    "collate",
    "load_annotations",
    "read_manifest",
    "write_manifest",
]


def __getattr__(name: str):
    # The datamodule imports lightning (slow); load it only when asked for.
    if name in ("IdentityVideoDataModule", "collate"):
        from idvid.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'idvid.data' has no attribute {name!r}")
