"""Fingerprints: what decides whether a clip's earlier result is still valid (writes go through idvid.atomic_files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_fingerprint(path: Path) -> dict[str, int | str]:
    """Name, size and modification time of an input: changes whenever the file is replaced or edited."""
    stat = path.stat()
    return {"name": path.name, "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def settings_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (file fingerprints, backend and settings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
