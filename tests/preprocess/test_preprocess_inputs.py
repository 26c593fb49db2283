"""Which inputs preprocess sees: a unique clip id per file, odd entries recorded, leftovers removed, outputs kept."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from idvid.data.manifest import read_manifest
from idvid.data.video_io import read_mp4, write_mp4
from idvid.errors import ConfigError
from idvid.preprocess import Preprocessor
from idvid.preprocess.pipeline import find_inputs

from .conftest import CountingAnalyzer, settings_for


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def short_hash(relative: str) -> str:
    return hashlib.sha256(relative.encode()).hexdigest()[:8]


def test_inputs_whose_names_clean_up_alike_get_distinct_ids(tmp_path):
    raw = tmp_path / "raw"
    (raw / "x y").mkdir(parents=True)
    (raw / "x_y").mkdir()
    for name in ["a b.mp4", "a_b.mp4", "a_b.mkv", "c.mp4", "c.mov", "d.mp4", "D.mp4", "x y/e.mp4", "x_y/e.mp4"]:
        (raw / name).write_bytes(b"")
    jobs = {str(job.source.relative_to(raw)): job.clip_id for job in find_inputs(settings_for(raw, tmp_path / "out"))}
    assert jobs == {
        # same cleaned stem, different extensions: the extension tells them apart (readable ids)
        "a_b.mkv": "a_b-mkv",
        "c.mov": "c-mov",
        "c.mp4": "c-mp4",
        # same cleaned stem and extension: a short hash of the relative path
        "a b.mp4": f"a_b-{short_hash('a b.mp4')}",
        "a_b.mp4": f"a_b-{short_hash('a_b.mp4')}",
        # names that differ only in case clash on case-insensitive file systems
        "D.mp4": f"D-{short_hash('D.mp4')}",
        "d.mp4": f"d-{short_hash('d.mp4')}",
        "x y/e.mp4": f"x_y__e-{short_hash('x y/e.mp4')}",
        "x_y/e.mp4": f"x_y__e-{short_hash('x_y/e.mp4')}",
    }


def test_an_id_that_still_clashes_is_refused_naming_both_inputs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ["a b.mp4", "a_b.mp4", f"a_b-{short_hash('a b.mp4')}.mp4"]:
        (raw / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'a b\.mp4' and 'a_b-[0-9a-f]{8}\.mp4' both map to clip id") as error:
        find_inputs(settings_for(raw, tmp_path / "out"))
    assert "rename one of them" in str(error.value)


def test_two_inputs_with_one_cleaned_name_both_reach_the_manifest_and_a_rerun_converges(clip_library, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy2(clip_library / "astronaut.mp4", raw / "a b.mp4")
    (raw / "a b.txt").write_text("the astronaut.")
    shutil.copy2(clip_library / "t1-1.mp4", raw / "a_b.mkv")  # an mp4 under another extension: probed by content
    (raw / "a_b.txt").write_text("the man.")
    out = tmp_path / "out"
    summary = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert summary["kept"] == 2 and summary["inputs"] == 2
    assert {r["source"]: r["status"] for r in records(out).values()} == {"a b.mp4": "kept", "a_b.mkv": "kept"}
    entries = read_manifest(summary["manifest"])
    assert sorted((e["id"], e["caption"]) for e in entries) == [("a_b-mkv", "the man."), ("a_b-mp4", "the astronaut.")]
    assert len({e["video"] for e in entries}) == 2
    # The mapping from input to clip id is part of the output.
    assert json.loads((out / "clip_ids.json").read_text()) == {"a b.mp4": "a_b-mp4", "a_b.mkv": "a_b-mkv"}

    again = CountingAnalyzer()
    rerun = Preprocessor(settings_for(raw, out), again).run()
    assert again.detect_calls == 0 and rerun["reused"] == 2 and rerun["kept"] == 2
    assert read_manifest(rerun["manifest"]) == entries


def test_broken_links_link_loops_and_other_odd_entries_are_recorded_skips(clip_library, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy2(clip_library / "wall.mp4", raw / "wall.mp4")
    (raw / "wall.txt").write_text("a wall.")
    (raw / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (raw / "loop1.mp4").symlink_to(raw / "loop2.mp4")
    (raw / "loop2.mp4").symlink_to(raw / "loop1.mp4")
    (tmp_path / "elsewhere").mkdir()
    (raw / "linked_folder").symlink_to(tmp_path / "elsewhere")
    (raw / "linked.mp4").symlink_to(raw / "wall.mp4")  # a link to a video is a video
    (raw / "linked.txt").write_text("the wall again.")
    os.mkfifo(raw / "pipe.mp4")  # opening it for reading would block the run
    out = tmp_path / "out"
    summary = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    entries = sorted(p.name for p in raw.iterdir() if not p.name.endswith(".txt"))
    assert summary["inputs"] == len(entries) == 7
    found = {name: (r["status"], r["reason"]) for name, r in records(out).items()}
    assert found == {
        "broken": ("skipped", "broken_symlink"),
        "linked": ("skipped", "no_face"),
        "linked_folder": ("skipped", "symlinked_folder"),
        "loop1": ("skipped", "symlink_loop"),
        "loop2": ("skipped", "symlink_loop"),
        "pipe": ("skipped", "not_a_file"),
        "wall": ("skipped", "no_face"),
    }
    assert str(tmp_path / "gone.mp4") in records(out)["broken"]["detail"]
    # Every skip is final: the manifest step is not left waiting on them (no video was kept here).
    assert summary["outcomes"]["skipped: symlink_loop"] == 2
    rerun = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert rerun["inputs"] == 7 and rerun["outcomes"] == summary["outcomes"]


def test_a_link_that_is_repaired_is_kept_on_the_next_run(clip_library, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy2(clip_library / "astronaut.mp4", raw / "astronaut.mp4")
    (raw / "astronaut.txt").write_text("an astronaut.")
    (raw / "later.mp4").symlink_to(tmp_path / "later-target.mp4")
    (raw / "later.txt").write_text("an astronaut, later.")
    out = tmp_path / "out"
    first = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert first["outcomes"] == {"kept": 1, "skipped: broken_symlink": 1}
    assert [e["id"] for e in read_manifest(first["manifest"])] == ["astronaut"]  # a broken link does not block it
    shutil.copy2(clip_library / "astronaut.mp4", tmp_path / "later-target.mp4")
    second = Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert second["kept"] == 2 and [e["id"] for e in read_manifest(second["manifest"])] == ["astronaut", "later"]


def test_leftover_temporary_files_of_a_killed_run_are_removed(clip_library, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy2(clip_library / "astronaut.mp4", raw / "astronaut.mp4")
    (raw / "astronaut.txt").write_text("an astronaut.")
    out = tmp_path / "out"
    # What `kill -9` leaves behind mid-write (write_atomic names a temporary .tmp-<pid>-<final name>).
    leftovers = [
        out / "videos" / ".tmp-4242-astronaut.mp4",
        out / "annotations" / ".tmp-4242-astronaut.npz",
        out / "records" / ".tmp-4242-astronaut.json",
        out / "cache" / "faces" / ".tmp-4242-astronaut.npz",
        out / ".tmp-4242-manifest.jsonl",
        out / ".tmp-4242-summary-rank0.json",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    someone_elses = out / "videos" / ".tmp-4242-notes.mp4"  # not a name this run writes: left alone
    someone_elses.write_bytes(b"?")
    Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
    assert [p for p in leftovers if p.exists()] == []
    assert someone_elses.exists()


def test_a_phone_video_stored_sideways_is_processed_upright(clip_library, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    upright = read_mp4(clip_library / "astronaut.mp4")[:, :, 32:224]  # taller than wide: a turn shows in the shape
    # Stored a quarter turn counter-clockwise, with the display matrix a phone writes to turn it back.
    write_mp4(raw / "phone.mp4", np.ascontiguousarray(np.rot90(upright, 1, axes=(1, 2))), display_rotation=-90)
    (raw / "phone.txt").write_text("an astronaut, filmed on a phone.")
    summary = Preprocessor(settings_for(raw, tmp_path / "out"), CountingAnalyzer()).run()
    assert summary["outcomes"] == {"kept": 1}
    [entry] = read_manifest(summary["manifest"])
    kept = read_mp4(entry["video"])
    assert kept.shape[1:] == upright.shape[1:]  # upright, not sideways
    assert np.abs(kept.astype(int) - upright[: len(kept)].astype(int)).mean() < 6  # the same picture


def test_an_out_holding_a_data_set_preprocess_did_not_write_is_refused_unless_overwrite(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = tmp_path / "demo"
    (out / "videos").mkdir(parents=True)
    (out / "manifest.jsonl").write_text('{"id": "talk"}\n')  # e.g. the demo set, or an imported one
    with pytest.raises(
        FileExistsError,
        match=r"data\.out=.*demo holds a data set that preprocess did not write "
        r"\(manifest\.jsonl, videos\)\nchoose another data\.out, or pass overwrite=true",
    ):
        Preprocessor(settings_for(raw, out), CountingAnalyzer())
    Preprocessor(settings_for(raw, out, overwrite=True), CountingAnalyzer()).run()
    # Its own output folder (clip_ids.json is written first) is resumed without the flag.
    Preprocessor(settings_for(raw, out), CountingAnalyzer()).run()
