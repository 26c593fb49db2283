"""Manifest validation errors name the line and what is wrong."""

from __future__ import annotations

import json

import pytest

from idvid.data.manifest import read_manifest


def write_lines(tmp_path, lines):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "clip.npz").write_bytes(b"")
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"id": "a", "video": "clip.mp4", "caption": "a person.", "annotations": "clip.npz", "identity": "p"}


def test_reads_entries_with_absolute_paths(tmp_path):
    entries = read_manifest(write_lines(tmp_path, [GOOD]))
    assert entries[0]["video"] == str(tmp_path / "clip.mp4")


def test_missing_key_names_line_and_key(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "caption"} | {"id": "b"}
    with pytest.raises(ValueError, match=r"manifest\.jsonl:2: missing key 'caption'"):
        read_manifest(write_lines(tmp_path, [GOOD, bad]))


def test_missing_file_names_line_and_path(tmp_path):
    bad = GOOD | {"id": "b", "video": "nope.mp4"}
    with pytest.raises(ValueError, match=r":2: video file not found: .*nope\.mp4"):
        read_manifest(write_lines(tmp_path, [GOOD, bad]))


def test_bad_json_and_duplicate_ids(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD])
    with pytest.raises(ValueError, match=r":2: id 'a' already used on line 1"):
        read_manifest(path)
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(ValueError, match=r":2: not valid JSON"):
        read_manifest(path)
