"""One demo build per test session, shared by the data tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from idvid.demo import build_demo


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """An IDVID_CACHE-style folder whose demo/ subfolder holds the built demo."""
    return tmp_path_factory.mktemp("idvid-cache")


@pytest.fixture(scope="session")
def demo_manifest(demo_cache) -> Path:
    start = time.perf_counter()
    manifest = build_demo(demo_cache / "demo")
    print(f"\ndemo build took {time.perf_counter() - start:.1f} s")
    return manifest
