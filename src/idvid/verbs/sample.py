"""The `sample` verb: a kit checkpoint + one reference photo + a prompt -> an mp4.

The reference goes through the same steps as training data: largest detected face,
5 keypoints, 5-point alignment, landmark-hull mask (the box's ellipse for backends without
68 landmarks) with the background whitened,
keypoint drawing, identity embedding. Classifier-free guidance is text-only (the
face conditions go to both branches), and injectors prepare their identity tokens
once per video. The face backend is set as in every verb: ``face=dlib|insightface
face.options.<name>=<value>`` after the options (``sample.yaml``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import yaml

from idvid.errors import ConfigError
from idvid.faces import box_ellipse_mask, face_analyzer_from_config, landmark_hull_mask
from idvid.faces.reference import align_reference, reference_annotations, sized_reference
from idvid.interop import load_module
from idvid.output_paths import check_output_file
from idvid.sampling.noise_priors import build_noise_prior
from idvid.training.visuals import write_video
from idvid.verbs.convert import load_into

log = logging.getLogger(__name__)


def _unit_range(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0


# The spellings `sample` took before every verb configured the face backend the same way.
OLD_FACE_FLAGS = ("--face", "--face-models")


def reference_batch(
    image_path: Path, prompt: str, height: int, width: int, face: Mapping[str, Any] | None = None
) -> dict:
    """The model inputs for one reference photo, or a clear error when the photo has no usable face.

    ``face`` is the face backend node of every verb, ``{"name": "dlib" | "insightface", "options": {...}}``
    (see idvid.faces.face_analyzer_from_config); None means dlib with its defaults.
    """
    bgr = cv2.imread(str(image_path))
    if bgr is None:
        raise FileNotFoundError(f"Cannot read the reference image {image_path}; give a .jpg or .png photo.")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    analyzer = face_analyzer_from_config(face)
    faces = analyzer.detect(rgb)
    if not faces:
        raise ValueError(
            f"No face found in {image_path} ({rgb.shape[1]}x{rgb.shape[0]}). Give a photo with one clearly visible, "
            f"roughly frontal face (at least ~80 px wide for the offline dlib detector)."
        )
    found = faces[0]  # largest first
    if len(faces) > 1:
        log.warning("%d faces in %s; using the largest, at %s", len(faces), image_path, np.round(found.box).tolist())
    if found.landmarks is not None:
        mask = landmark_hull_mask(rgb.shape[:2], found.landmarks)
    else:
        mask = box_ellipse_mask(rgb.shape[:2], found.box)
    aligned_face, matrix = align_reference(rgb, found.kps, mask)
    aligned, kps_image = sized_reference(aligned_face, found.kps, matrix, height, width)
    # The reference's points as the dataset gives them (idvid.data.dataset lists the keys sampling has).
    points = reference_annotations(found.kps, found.landmarks, np.asarray(found.box), matrix, height, width)
    return {
        "ref_image": _unit_range(aligned)[None],
        "ref_kps_image": _unit_range(kps_image)[None],
        "ref_embedding": torch.from_numpy(analyzer.embed(rgb, found)).float()[None],
        **{f"ref_{name}": torch.from_numpy(value)[None] for name, value in points.items()},
        "caption": [prompt],
    }


def sample(
    checkpoint: str,
    image: str,
    prompt: str,
    out: str,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 50,
    guidance: float = 6.0,
    seed: int = 0,
    ema: bool = False,
    face: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    noise_prior: Mapping[str, Any] | str | None = None,
    load: Sequence[str] = (),
) -> Path:
    """Generate one video to `out` (an existing `out` only with `overwrite`, checked before any work).

    ``noise_prior``: ``{name: <registered noise prior>, ...options}`` for the initial noise (default gaussian).
    ``load``: ``FORMAT=FILE`` files loaded into the model first (e.g. text tokens exported from another run).
    """
    out_path = check_output_file(out, overwrite)
    build_noise_prior(noise_prior)  # refused before the checkpoint loads
    module = load_module(checkpoint, ema=ema).eval()
    load_into(module, load)
    default_frames, default_height, default_width = module.backbone.default_video_size
    num_frames = num_frames or default_frames
    height = height or default_height
    width = width or default_width
    batch = reference_batch(Path(image), prompt, height, width, face)
    video = module.generate(
        batch, num_frames, height, width, steps, guidance, seed=seed, progress=True, noise_prior=noise_prior
    )
    return write_video(out_path, video[0])


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m idvid sample", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a kit checkpoint (.ckpt) from fit or convert")
    parser.add_argument("--image", required=True, help="reference photo with one face")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, help="mp4 to write")
    parser.add_argument("--frames", type=int, default=None, help="default: the backbone's default video size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action="store_true", help="sample with the EMA of the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--noise-prior", default="gaussian", help="registered noise prior of the initial noise")
    parser.add_argument(
        "--noise-prior-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the noise prior (repeatable; VALUE is read as YAML, e.g. gamma=0.1)",
    )
    parser.add_argument(
        "--load",
        action="append",
        default=[],
        metavar="FORMAT=FILE",
        help="load an exported file into the model first with a format plugin (repeatable; formats that load: "
        "python -m idvid plugins), e.g. learned text tokens",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="the face backend, as in every verb: face=dlib|insightface face.options.<name>=<value> "
        "(e.g. face=insightface face.options.models_dir=/models/antelopev2)",
    )
    check_old_face_flags(args)
    options = parser.parse_intermixed_args(args)
    path = sample(
        options.checkpoint,
        options.image,
        options.prompt,
        options.out,
        options.frames,
        options.height,
        options.width,
        options.steps,
        options.guidance,
        options.seed,
        options.ema,
        face_node(options.overrides),
        options.overwrite,
        noise_prior_node(options.noise_prior, options.noise_prior_option),
        options.load,
    )
    print(f"wrote {path}")


def noise_prior_node(name: str, options: list[str]) -> dict[str, Any]:
    """``{name, **options}`` from ``--noise-prior`` and its ``KEY=VALUE`` options."""
    node: dict[str, Any] = {"name": name}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--noise-prior-option {option!r} is not KEY=VALUE.", "Write e.g. --noise-prior-option gamma=0.1."
            )
        node[key] = yaml.safe_load(value)
    return node


def check_old_face_flags(args: list[str]) -> None:
    old = [arg.split("=", 1)[0] for arg in args if arg.split("=", 1)[0] in OLD_FACE_FLAGS]
    if old:
        raise ConfigError(
            f"sample {old[0]} is the old spelling of the face backend setting.",
            "Every verb now takes face=dlib|insightface face.options.<name>=<value>: e.g. "
            "python -m idvid sample CKPT --image ref.jpg --prompt TEXT --out video.mp4 face=insightface "
            "face.options.models_dir=/models/antelopev2",
        )


def face_node(overrides: list[str]) -> dict[str, Any]:
    """The ``face`` node of ``sample.yaml`` composed with ``face=...`` / ``face.options...=...`` overrides."""
    from omegaconf import OmegaConf

    from idvid import config_packages

    others = [o for o in overrides if not o.lstrip("+~").startswith("face")]
    if others:
        raise ConfigError(
            f"sample takes only face backend overrides after its options, not {others}.",
            "Give face=dlib|insightface and face.options.<name>=<value>; the other settings are the --options.",
        )
    config_packages.check_config_choices(overrides)
    cfg = config_packages.compose("sample", overrides)
    return OmegaConf.to_container(cfg.face, resolve=True, throw_on_missing=True)
