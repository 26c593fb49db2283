"""``python -m idvid refine CKPT VIDEO --mode face|tiled --strength S --out OUT.mp4``: Face VCD and Tiled VCD.

A verb the plugin adds (``register_verb``). It works with any kit checkpoint that samples: the clips are
re-denoised with the model's own schedule and conditions (``--prompt``; ``--image`` for methods with
reference conditions; ``--load`` for exported files such as ID tokens), and the output keeps the
input's frame count and frame rate.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

from idvid.data.video_io import probe_video, read_mp4, write_mp4
from idvid.errors import ConfigError, MissingFileError
from idvid.faces import face_analyzer_from_config
from idvid.interop import load_module
from idvid.output_paths import check_output_file
from idvid.registry import register_verb
from idvid.sampling.noise_priors import build_noise_prior
from idvid.sampling.sampler import first_step_at_strength
from idvid.verbs.convert import load_into
from idvid.verbs.sample import face_node, noise_prior_node, reference_batch
from idvid_magicme.refine import SDEditDenoiser, refine_face, refine_tiled

MODES = ("face", "tiled")


def refine(
    checkpoint: str,
    video: str,
    mode: str,
    strength: float,
    out: str,
    prompt: str = "",
    image: str | None = None,
    steps: int = 50,
    guidance: float = 6.0,
    seed: int = 0,
    scale: float = 2.0,
    tiles: tuple[int, int] = (2, 2),
    tile: tuple[int, int] | None = None,
    overlap: float = 0.25,
    face: Mapping[str, Any] | None = None,
    noise_prior: Mapping[str, Any] | str | None = None,
    load: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Refine ``video`` with the checkpoint's model and write ``out`` (same frame count and frame rate)."""
    if mode not in MODES:
        raise ConfigError(f"refine --mode {mode!r} is not one of {MODES}.", "Give --mode face or --mode tiled.")
    first_step_at_strength(steps, strength)  # refuses a strength outside [0, 1]
    if mode == "tiled" and not scale >= 1.0:
        raise ConfigError(f"refine --scale {scale} is below 1.", "Tiled VCD upscales the video: give e.g. --scale 2.")
    out_path = check_output_file(out, overwrite)
    if not Path(video).is_file():
        raise MissingFileError(f"refine: the video {video} does not exist.", "Give the path of an mp4 to refine.")
    build_noise_prior(noise_prior)  # refused before the checkpoint loads
    info = probe_video(video)
    frames = read_mp4(video)
    module = load_module(checkpoint).eval()
    load_into(module, load)
    if image is None and len(module.conditioners):
        raise ConfigError(
            f"refine: this checkpoint's method conditions on a reference photo (conditioners "
            f"{sorted(module.conditioners)}), and no --image was given.",
            "Give --image REF, the photo of the person the video was made with.",
        )

    batches: dict[tuple[int, int], dict[str, Any]] = {}  # the reference is read once per clip size (tiles share one)

    def make_batch(height: int, width: int) -> dict[str, Any]:
        if (height, width) not in batches:
            batches[height, width] = (
                {"caption": [prompt]} if image is None else reference_batch(Path(image), prompt, height, width, face)
            )
        return batches[height, width]

    denoise = SDEditDenoiser(module, make_batch, strength, steps, guidance, seed, noise_prior, progress)
    if mode == "face":
        _, model_h, model_w = module.backbone.default_video_size
        refined, _ = refine_face(frames, denoise, face_analyzer_from_config(face), (model_h, model_w))
    else:
        backbone_info = module.backbone.info
        multiple = backbone_info.vae_spatial_compression * backbone_info.patch_size
        refined = refine_tiled(frames, denoise, scale, tiles, tile, overlap, multiple, progress=progress)
    fps = Fraction(info.fps).limit_denominator(1001) if info.fps else Fraction(8)
    write_mp4(out_path, refined, fps=fps)
    return out_path


def _pair(text: str) -> tuple[int, int]:
    """``"2x2"`` -> (2, 2)."""
    first, sep, second = text.lower().partition("x")
    if not sep or not first.isdigit() or not second.isdigit() or int(first) < 1 or int(second) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not AxB with positive integers (e.g. 2x2)")
    return int(first), int(second)


@register_verb("refine", "CKPT VIDEO --mode face|tiled --strength S --out OUT.mp4: Magic-Me's Face / Tiled VCD")
def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m idvid refine", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a kit checkpoint (.ckpt) from fit or convert")
    parser.add_argument("video", help="the video to refine (mp4)")
    parser.add_argument("--mode", required=True, choices=MODES, help="face: re-denoise the face; tiled: upscale")
    parser.add_argument("--strength", type=float, required=True, help="share of the schedule re-run, in [0, 1]")
    parser.add_argument("--out", required=True, help="mp4 to write")
    parser.add_argument("--prompt", default="", help="the prompt (the one the video was made with)")
    parser.add_argument("--image", default=None, help="reference photo, for methods with reference conditions")
    parser.add_argument("--steps", type=int, default=50, help="steps of the whole schedule (strength runs a share)")
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=2.0, help="tiled: upscaling per side")
    parser.add_argument("--tiles", type=_pair, default=(2, 2), metavar="RxC", help="tiled: rows x columns")
    parser.add_argument(
        "--tile", type=_pair, default=None, metavar="HxW", help="tiled: tile size (default: from --tiles)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="tiled: overlap of neighbouring tiles (share)")
    parser.add_argument("--noise-prior", default="gaussian", help="registered noise prior of the added noise")
    parser.add_argument("--noise-prior-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--load", action="append", default=[], metavar="FORMAT=FILE", help="as in sample")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("overrides", nargs="*", help="the face backend: face=dlib|insightface face.options.<k>=<v>")
    options = parser.parse_intermixed_args(args)
    if not 0.0 <= options.overlap < 1.0:
        raise ConfigError(f"refine --overlap {options.overlap} is not in [0, 1).", "Give e.g. --overlap 0.25.")
    path = refine(
        options.checkpoint,
        options.video,
        options.mode,
        options.strength,
        options.out,
        prompt=options.prompt,
        image=options.image,
        steps=options.steps,
        guidance=options.guidance,
        seed=options.seed,
        scale=options.scale,
        tiles=options.tiles,
        tile=options.tile,
        overlap=options.overlap,
        face=face_node(options.overrides),
        noise_prior=noise_prior_node(options.noise_prior, options.noise_prior_option),
        load=options.load,
        overwrite=options.overwrite,
    )
    print(f"wrote {path}")


__all__ = ["main", "refine"]
