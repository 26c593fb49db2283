"""Captions for raw videos: a sidecar `<video stem>.txt`, or one CSV / JSONL file for the folder."""

from __future__ import annotations

import csv
from pathlib import Path

from idvid.data.manifest import read_json_lines

# Column / key names accepted in a captions file (the second spellings are ConsisID's captions.json).
VIDEO_KEYS = ("video", "path")
CAPTION_KEYS = ("caption", "cap", "text")


class Captions:
    """Looks up the caption (and optional identity) of a video under `raw_dir`.

    captions_file: a .csv with a header row, or a .jsonl with one object a line; each row names
    the video (`video` or `path`, relative to raw_dir or just the file name) and its caption
    (`caption`, `cap` or `text`), optionally an `identity` (clips of one person share it).
    Videos it does not list, or every video when there is no file, use the sidecar
    `<video stem>.txt` next to the video. Raises ValueError for a malformed captions file
    (a bad configuration), never for a video without a caption (that video is skipped).
    """

    def __init__(self, raw_dir: str | Path, captions_file: str | Path | None = None):
        self.raw_dir = Path(raw_dir)
        self.rows: dict[str, dict[str, str]] = {}
        self.file = Path(captions_file).expanduser() if captions_file else None
        if self.file is not None:
            for lineno, row in _read_rows(self.file):
                video = next((row[k] for k in VIDEO_KEYS if row.get(k)), None)
                caption = next((row[k] for k in CAPTION_KEYS if row.get(k) is not None), None)
                if video is None or caption is None:
                    raise ValueError(
                        f"{self.file}:{lineno}: needs a video ({' or '.join(VIDEO_KEYS)}) and a caption "
                        f"({' or '.join(CAPTION_KEYS)}); got keys {sorted(row)}"
                    )
                self.rows[str(Path(video))] = {"caption": str(caption), "identity": row.get("identity") or ""}

    def lookup(self, video: Path) -> dict[str, str] | None:
        """{"caption", "identity"} for `video` (identity "" when not given), or None when it has no caption."""
        relative = str(video.relative_to(self.raw_dir))
        row = self.rows.get(relative) or self.rows.get(video.name)
        if row is None:
            sidecar = video.with_suffix(".txt")
            if not sidecar.is_file():
                return None
            row = {"caption": sidecar.read_text(encoding="utf-8"), "identity": ""}
        caption = " ".join(row["caption"].split())
        return {"caption": caption, "identity": row["identity"]} if caption else None


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}; pass data.captions=<a .csv or .jsonl> or null")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [(lineno, row) for lineno, row in enumerate(csv.DictReader(handle), start=2)]
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_json_lines(path)
    raise ValueError(f"captions file {path} must end in .csv or .jsonl (one object a line)")
