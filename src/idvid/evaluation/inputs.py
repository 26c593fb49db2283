"""Pair generated videos with their reference photos and prompts.

A video ``NAME.mp4`` in the videos folder pairs with ``NAME.png`` or ``NAME.jpg`` in the
references folder and with the line ``NAME<TAB>prompt`` of the prompts file. A video that
lacks a partner is recorded as skipped, with the reason, and the others are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REFERENCE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class EvalItem:
    """One generated video with the reference photo and the prompt it was generated from."""

    name: str
    video: Path
    reference: Path
    prompt: str


@dataclass(frozen=True)
class Skipped:
    """A video (or reference) that could not be evaluated, and why."""

    name: str
    reason: str


def read_prompts(path: str | Path) -> dict[str, str]:
    """``NAME<TAB>prompt`` lines -> {NAME: prompt}; blank lines and lines starting with # are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}; give prompts=FILE with one `NAME<TAB>prompt` a line.")
    prompts: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, prompt = line.partition("\t")
        if not tab or not name.strip() or not prompt.strip():
            raise ValueError(
                f"{path}:{number}: expected `NAME<TAB>prompt`, got {line[:80]!r}; separate the video name and its "
                f"prompt with one tab character."
            )
        if name.strip() in prompts:
            raise ValueError(f"{path}:{number}: video name {name.strip()!r} appears twice; keep one prompt per video.")
        prompts[name.strip()] = prompt.strip()
    return prompts


def find_reference(refs_dir: Path, name: str) -> Path | None:
    for suffix in REFERENCE_SUFFIXES:
        candidate = refs_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def pair_inputs(videos: str | Path, refs: str | Path, prompts: str | Path) -> tuple[list[EvalItem], list[Skipped]]:
    """Every ``*.mp4`` of ``videos`` with its reference and prompt, sorted by name; the rest as skipped."""
    videos, refs = Path(videos), Path(refs)
    for what, folder in (("videos", videos), ("refs", refs)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}; pass {what}=DIR (an existing folder).")
    texts = read_prompts(prompts)
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    video_paths = sorted(videos.glob("*.mp4"))
    if not video_paths:
        raise FileNotFoundError(f"no .mp4 video in {videos}; videos=DIR must hold the generated NAME.mp4 files.")
    for video in video_paths:
        name = video.stem
        reference = find_reference(refs, name)
        if reference is None:
            names = " or ".join(f"{name}{s}" for s in REFERENCE_SUFFIXES)
            skipped.append(Skipped(name, f"no reference image {names} in {refs}"))
        elif name not in texts:
            skipped.append(Skipped(name, f"no line `{name}<TAB>prompt` in {prompts}"))
        else:
            items.append(EvalItem(name, video, reference, texts[name]))
    return items, skipped
