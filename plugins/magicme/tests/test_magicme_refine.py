"""refine (Face VCD, Tiled VCD): partial re-denoising of a face crop or of upscaled tiles, pasted / blended back."""

from __future__ import annotations

import cv2
import hydra
import lightning as L
import numpy as np
import pytest
import skimage.data
import torch
from idvid_magicme.refine import SDEditDenoiser, feathered_mask, refine_face, refine_tiled
from idvid_magicme.refine_verb import main as refine_main
from idvid_magicme.refine_verb import refine

from idvid.data.manifest import read_manifest
from idvid.data.video_io import probe_video, read_mp4, write_mp4
from idvid.demo import build_demo
from idvid.errors import ConfigError, UserError
from idvid.faces import face_analyzer_from_config
from idvid.interop import save_module
from idvid.verbs.sample import reference_batch
from tests.conftest import compose_config

BACKBONES = ["cogvideox_tiny", "wan_tiny"]


@pytest.fixture(scope="module", params=BACKBONES)
def module(request):
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=baseline", f"backbone={request.param}"]).model).eval()


@pytest.fixture(scope="module")
def astronaut_frames():
    """The demo astronaut's first 6 frames (256x256) with the last one blanked (no face)."""
    entry = next(e for e in read_manifest(build_demo()) if e["identity"] == "astronaut-0")
    frames = read_mp4(entry["video"])[:6].copy()
    frames[-1] = 127
    return frames


def caption_only(height, width):
    return {"caption": ["a person"]}


def test_strength_zero_returns_the_input_through_the_vae(module):
    clip = torch.rand(11, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    denoiser = SDEditDenoiser(module, caption_only, strength=0.0, steps=4)
    assert denoiser.windows(11) == [(0, 9, 9), (9, 2, 5)]  # the last window padded to a frame count it takes
    round_trip = module.backbone.decode_latents(module.backbone.encode_video(clip[None, :9]))[0]
    padded = torch.cat([clip[9:], clip[10:].expand(3, -1, -1, -1)])
    last = module.backbone.decode_latents(module.backbone.encode_video(padded[None]))[0, :2]
    assert torch.equal(denoiser(clip), torch.cat([round_trip, last]))


def test_face_mode_changes_pixels_only_inside_the_feathered_face_region(astronaut_frames, caplog):
    L.seed_everything(0)
    model = hydra.utils.instantiate(compose_config(["experiment=baseline", "backbone=cogvideox_tiny"]).model).eval()
    denoiser = SDEditDenoiser(model, caption_only, strength=0.5, steps=2)
    with caplog.at_level("WARNING"):
        out, masks = refine_face(astronaut_frames, denoiser, face_analyzer_from_config(None), (64, 64))
    assert "1 of 6 frames have no face" in caplog.text
    assert out.shape == astronaut_frames.shape and out.dtype == np.uint8
    outside = masks == 0
    assert np.array_equal(out[outside], astronaut_frames[outside])
    assert (out != astronaut_frames).any(-1)[~outside].mean() > 0.5  # the face region was re-denoised
    assert np.array_equal(out[-1], astronaut_frames[-1])  # the face-less frame is left as it is
    assert 0.1 < outside[:-1].mean() < 0.95  # a crop around the face (the head and some background), not the frame


def test_face_mode_on_a_video_without_a_face_is_a_named_error():
    blank = np.full((3, 64, 64, 3), 127, np.uint8)
    with pytest.raises(UserError, match="no face in any of the video's 3 frames"):
        refine_face(blank, lambda clip: clip, face_analyzer_from_config(None), (64, 64))


def test_feathered_mask_is_one_inside_and_zero_on_the_border():
    mask = feathered_mask(40, 60, 0.2)
    assert mask[20, 30] == 1 and mask[0].max() == 0 and mask[:, -1].max() == 0
    assert np.all(np.diff(mask[20, :30]) >= 0)  # rises monotonically towards the centre


def test_tiled_mode_output_has_the_upscaled_size(module):
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    denoiser = SDEditDenoiser(module, caption_only, strength=0.5, steps=2)
    out = refine_tiled(frames, denoiser, scale=2, grid=(2, 2), overlap=0.25, multiple=16)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8


def test_tiles_blend_without_seams_on_a_constant_video():
    frames = np.full((2, 32, 32, 3), 100, np.uint8)
    assert np.array_equal(refine_tiled(frames, lambda clip: clip, multiple=16), np.full((2, 64, 64, 3), 100))
    offsets = iter([0.0, 0.2, 0.4, 0.6])  # each tile comes back brighter than the last: a seam if not blended

    def brighten(clip):
        return clip + next(offsets)

    out = refine_tiled(frames, brighten, multiple=16).astype(int)  # 48x48 tiles at 0 and 16: 32 px overlap
    step = 0.2 * 127.5  # the jump between neighbouring tiles, in pixel values
    assert out.max() - out.min() >= 2 * step  # the tiles did differ
    largest_neighbour_change = max(np.abs(np.diff(out, axis=1)).max(), np.abs(np.diff(out, axis=2)).max())
    assert largest_neighbour_change <= step / 4  # spread over the overlap, not a jump at a tile's edge


def test_a_tile_larger_than_the_video_is_a_named_error():
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"tiles of 80x48 are larger than the upscaled video \(64x64\)"):
        refine_tiled(frames, lambda clip: clip, tile_hw=(80, 48))
    with pytest.raises(ConfigError, match="do not cover"):
        refine_tiled(frames, lambda clip: clip, grid=(2, 2), tile_hw=(16, 16))


@pytest.mark.slow
def test_refine_verb_keeps_frame_count_and_rate_in_both_modes(tmp_path, astronaut_frames):
    L.seed_everything(0)
    model = hydra.utils.instantiate(compose_config(["experiment=baseline", "backbone=cogvideox_tiny"]).model)
    checkpoint = str(save_module(model, tmp_path / "m.ckpt"))
    video = tmp_path / "in.mp4"
    write_mp4(video, astronaut_frames[:5], fps=12)
    common = ["--strength", "0.5", "--steps", "2", "--prompt", "a person"]
    refine_main([checkpoint, str(video), "--mode", "face", "--out", str(tmp_path / "face.mp4"), *common])
    small = tmp_path / "small.mp4"
    write_mp4(small, np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in astronaut_frames[:5]]))
    refine_main([checkpoint, str(small), "--mode", "tiled", "--out", str(tmp_path / "tiled.mp4"), *common])
    face, tiled = probe_video(tmp_path / "face.mp4"), probe_video(tmp_path / "tiled.mp4")
    assert (face.width, face.height, face.fps, len(read_mp4(tmp_path / "face.mp4"))) == (256, 256, 12, 5)
    assert (tiled.width, tiled.height, tiled.fps, len(read_mp4(tmp_path / "tiled.mp4"))) == (128, 128, 8, 5)
    with pytest.raises(ConfigError, match=r"strength=1.5 is not in \[0, 1\]"):
        refine_main([checkpoint, str(small), "--mode", "tiled", "--out", str(tmp_path / "x.mp4"), "--strength", "1.5"])
    with pytest.raises(ConfigError, match="refine --scale 0.5 is below 1"):
        refine_main(
            [checkpoint, str(small), "--mode", "tiled", "--out", str(tmp_path / "x.mp4"), *common, "--scale", "0.5"]
        )


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_method_with_reference_conditions_refines_with_the_reference_photo(tmp_path):
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    L.seed_everything(0)
    plan_c = hydra.utils.instantiate(compose_config(["experiment=plan_c", "backbone=cogvideox_tiny"]).model).eval()
    sizes = []

    def make_batch(height, width):
        sizes.append((height, width))
        return reference_batch(photo, "a person", height, width)

    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    out = refine_tiled(frames, SDEditDenoiser(plan_c, make_batch, strength=0.5, steps=2), multiple=16)
    assert out.shape == (3, 64, 64, 3) and sizes == [(48, 48)] * 4  # the reference at each tile's size
    video = tmp_path / "in.mp4"
    write_mp4(video, frames)
    with pytest.raises(ConfigError, match=r"(?s)conditions on a reference photo.*no --image.*Give --image REF"):
        refine(str(save_module(plan_c, tmp_path / "c.ckpt")), str(video), "tiled", 0.5, str(tmp_path / "out.mp4"))
