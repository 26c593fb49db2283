"""The TOY identity data set: ~100 distinct faces from photos that ship in installed packages, built offline.

Faces: the 100 face crops of scikit-image's ``data.lfw_subset()`` (25x25 grey, one face each), the
astronaut and the six people of insightface's ``t1.jpg`` (the demo's photos). Each face is cut out
along its landmark hull and put on white, the background ConsisID's references have (``on_white``), and
becomes one short clip with a camera move over it (the demo's renderer, smaller frames) that goes
through ``idvid.preprocess`` like any user video, so annotations, masks, aligned references and the
cross-face frames (the reference from a frame outside the training clip, i.e. another view of the
same face) are made by the one preprocessing path there is.

Two sets are built from the same photos: ``all`` (every face; the toy ablation trains on it) and
``small`` (SMALL_PHOTOS: 11 LFW crops, so a CPU learns its faces in a few minutes: ``scale=toy``).

A fixed split of identities: HELDOUT_IDS are never trained on. The folder holds
``manifest.jsonl`` (everything), ``train.jsonl`` and ``heldout.jsonl`` (the same lines, split).
Deterministic: the same seed gives the same clips, byte for byte up to the mp4 encoder.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from idvid.data.manifest import read_manifest
from idvid.demo import DEMO_SEED, build_cached, default_cache_root, random_camera, source_photos, write_clip
from idvid.faces import DlibFaceAnalyzer, Face, align_face, landmark_hull_mask, whiten_background

log = logging.getLogger(__name__)

TOY_VERSION = "toy-v2"  # bump when the builder's output changes (the cache folder is named after it)
FRAME_SIZE = 128  # rendered frames; training reads them at data/toy.yaml's size
NUM_FRAMES = 12
LFW_FACES = 100  # lfw_subset(): 100 faces, then 100 non-faces
LFW_SCALE = 4  # the 25 px crops are upsampled so that the face detector finds them
# Identities never trained on: every 10th LFW face and one person of t1.jpg (fixed, not drawn).
HELDOUT_IDS = tuple(f"lfw-{i:03d}" for i in range(5, LFW_FACES, 10)) + ("t1-5",)
CLIP_NUM_FRAMES, CLIP_STRIDE = 5, 2  # the training clip (data/toy.yaml): 5 frames, every 2nd
# A third of the demo's camera move (zoom, pan, roll): the toy is about identity, so the reference (another
# frame of the clip) stays close to every frame; with the full move a CPU-sized model learns an average face.
MOTION_AMOUNT = 0.35
# The small set: LFW faces 0-9 and 15. lfw-005 and lfw-015 are held out; 7 of the other 9 crops yield a clip
# (in two the detector finds no face), few enough identities to be learnt in minutes on a CPU.
SMALL_PHOTOS = (*(f"lfw-{i:03d}" for i in range(10)), "lfw-015")
TOY_SETS = {"all": None, "small": SMALL_PHOTOS}  # set name -> the photos it is built from (None: every one)


def toy_cache_dir(cache_dir: Path | str | None = None, toy_set: str = "all") -> Path:
    """`<cache root>/toy/<TOY_VERSION>[-<set>]` (cache root: `$IDVID_CACHE`, else ~/.cache/idvid)."""
    if toy_set not in TOY_SETS:
        raise ValueError(f"unknown toy set {toy_set!r}; use one of {list(TOY_SETS)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_root().parent / "toy"
    return root / (TOY_VERSION if toy_set == "all" else f"{TOY_VERSION}-{toy_set}")


def build_toy(cache_dir: Path | str | None = None, toy_set: str = "all") -> Path:
    """Build a toy set once (atomically) and return its folder (manifest.jsonl, train.jsonl, heldout.jsonl)."""
    folder = toy_cache_dir(cache_dir, toy_set)  # refuses an unknown set
    return build_cached(folder, partial(_build_into, names=TOY_SETS[toy_set]), f"toy ({toy_set})")


def toy_manifest(split: str = "train", cache_dir: Path | str | None = None, toy_set: str = "all") -> Path:
    """The manifest of one split of a toy set ("train", "heldout" or "all"), building the set on first use."""
    names = {"train": "train.jsonl", "heldout": "heldout.jsonl", "all": "manifest.jsonl"}
    if split not in names:
        raise ValueError(f"unknown toy split {split!r}; use one of {sorted(names)}")
    return build_toy(cache_dir, toy_set) / names[split]


def toy_photos() -> dict[str, np.ndarray]:
    """Name -> RGB uint8 photo: lfw-000 ... lfw-099 (upsampled grey crops), astronaut, t1."""
    import skimage.data

    photos = {}
    for index, crop in enumerate(skimage.data.lfw_subset()[:LFW_FACES]):
        grey = np.round(crop * 255).astype(np.uint8)
        size = grey.shape[0] * LFW_SCALE
        big = cv2.resize(grey, (size, size), interpolation=cv2.INTER_CUBIC)
        photos[f"lfw-{index:03d}"] = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=-1))
    photos.update(source_photos())
    return photos


def toy_settings(raw: Path, out: Path):
    """The demo's preprocessing settings, scaled for 12-frame 128x128 clips with small faces."""
    from idvid.preprocess import ClipSettings, FilterSettings, PreprocessSettings

    filters = FilterSettings(min_face_size=32, min_valid_fraction=0.5, max_rotation_deg=60, max_motion_ratio=None)
    return PreprocessSettings(
        raw=raw,
        out=out,
        filters=filters,
        clip=ClipSettings(num_frames=CLIP_NUM_FRAMES, frame_stride=CLIP_STRIDE),
        align_size=128,  # the sources are small: a 512 px reference would be upsampled blur
    )


def _build_into(out_dir: Path, names: tuple[str, ...] | None) -> None:
    from idvid.preprocess import Preprocessor

    raw = out_dir / "raw"
    raw.mkdir()
    analyzer = DlibFaceAnalyzer()
    for source_index, (name, photo) in enumerate(toy_photos().items()):
        if names is not None and name not in names:
            continue
        faces = analyzer.detect(photo)
        if name.startswith("lfw-"):
            faces = faces[:1]  # a crop holds one face
        for face_index, face in enumerate(faces):
            clip_id = name if name.startswith("lfw-") else f"{name}-{face_index}"
            seed = (DEMO_SEED, 7, source_index, face_index)
            render_toy_clip(aligned_on_white(photo, face), clip_id, seed, raw)
    summary = Preprocessor(toy_settings(raw, out_dir), analyzer).run()
    if not summary["manifest"]:
        raise RuntimeError(f"toy build produced no usable clip ({summary['outcomes']}); check the face detector")
    split_manifest(out_dir / "manifest.jsonl")
    for leftover in sorted(raw.iterdir()):
        leftover.unlink()
    raw.rmdir()


def aligned_on_white(photo: np.ndarray, face: Face, size: int = FRAME_SIZE) -> np.ndarray:
    """The face alone on white, aligned by its 5 keypoints exactly as references are (``align_face``).

    Why: the toy's frames then have the background and the framing its references have (ConsisID whitens
    everything outside the face and aligns it to a template), so at this scale the identity signal's job
    is the face, not finding where and how large it is. With the photos' own backgrounds and framing, a
    reference tells little about most of a frame and a CPU-sized model learns an average face.
    """
    whitened = whiten_background(photo, landmark_hull_mask(photo.shape[:2], face.landmarks))
    return align_face(whitened, face.kps, size=size, border_value=(255, 255, 255))[0]


def render_toy_clip(aligned: np.ndarray, clip_id: str, seed: tuple[int, ...], raw: Path) -> Path:
    """One clip of the aligned face under a small camera move (the demo's moves at MOTION_AMOUNT, about the
    frame's centre, zoom relative to the move's middle), with the demo's caption and voice."""
    camera = random_camera(np.random.default_rng(seed)).scaled(MOTION_AMOUNT)
    size = aligned.shape[0]
    middle_fill = sum(camera.fill) / 2
    frames = []
    for t in np.linspace(0.0, 1.0, NUM_FRAMES):
        fill, pan_x, pan_y, roll_deg = camera.at(t)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), roll_deg, fill / middle_fill)
        matrix[:, 2] += np.array([pan_x, pan_y]) * size
        frames.append(cv2.warpAffine(aligned, matrix, (size, size), borderValue=(255, 255, 255)))
    return write_clip(raw, clip_id, np.stack(frames), camera, seed)


def split_manifest(manifest: Path) -> tuple[int, int]:
    """Write train.jsonl / heldout.jsonl next to `manifest` by HELDOUT_IDS; return their sizes."""
    lines = [line for line in manifest.read_text().splitlines() if line.strip()]
    entries = read_manifest(manifest)
    heldout = [line for line, e in zip(lines, entries) if e["identity"] in HELDOUT_IDS]
    train = [line for line, e in zip(lines, entries) if e["identity"] not in HELDOUT_IDS]
    if not heldout or not train:
        raise RuntimeError(f"toy split left {len(train)} train and {len(heldout)} held-out clips; check {manifest}")
    (manifest.parent / "train.jsonl").write_text("\n".join(train) + "\n")
    (manifest.parent / "heldout.jsonl").write_text("\n".join(heldout) + "\n")
    log.info("toy split: %d train clips, %d held-out clips", len(train), len(heldout))
    return len(train), len(heldout)
