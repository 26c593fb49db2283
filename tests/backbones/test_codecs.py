"""The weight-free latent codecs (idvid.backbones.codecs) and both adapters built with one in place of the VAE."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from omegaconf import OmegaConf

from idvid.backbones.codecs import LatentCodec, codec_statistics
from idvid.registry import PluginKind, build

from ..conftest import compose_config

KINDS = ["haar", "unshuffle"]


def real_frames() -> torch.Tensor:
    """Two 64x64 frames of a real photo (the astronaut and a shifted crop), [1, 2, 3, 64, 64] in [-1, 1]."""
    photo = skimage.data.astronaut()
    crops = [cv2.resize(photo[y : y + 256, 128:384], (64, 64), interpolation=cv2.INTER_AREA) for y in (0, 40)]
    frames = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return frames.unsqueeze(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_round_trip_is_exact_on_random_and_real_frames(kind, levels):
    generator = torch.Generator().manual_seed(levels)
    statistics = {"mean": torch.randn(3 * 4**levels).tolist(), "std": (torch.rand(3 * 4**levels) + 0.1).tolist()}
    codec = LatentCodec(kind, levels, statistics, scale="per_channel")
    for video in (torch.rand(2, 3, 3, 32, 48, generator=generator) * 2 - 1, real_frames()):
        latents = codec.encode(video)
        assert latents.shape == (*video.shape[:2], 3 * 4**levels, video.shape[3] >> levels, video.shape[4] >> levels)
        torch.testing.assert_close(codec.decode(latents), video, atol=1e-5, rtol=0)


def test_haar_is_orthonormal_and_its_first_band_is_the_block_average():
    video = real_frames()
    coefficients = LatentCodec("haar", 1).transform(video)
    torch.testing.assert_close(coefficients.square().sum(), video.square().sum())  # energy kept
    average = torch.nn.functional.avg_pool2d(video.flatten(0, 1), 2).unflatten(0, (1, 2))
    torch.testing.assert_close(coefficients[:, :, 0::4] / 2, average)  # low band of each colour channel


def test_bad_codec_settings_are_refused():
    with pytest.raises(ValueError, match="kind='dct'"):
        LatentCodec("dct")
    with pytest.raises(ValueError, match="48 means"):
        LatentCodec("haar", 2, {"mean": [0.0] * 12, "std": [1.0] * 12})
    with pytest.raises(ValueError, match="multiples of 4"):
        LatentCodec("haar", 2).encode(torch.zeros(1, 1, 3, 30, 32))


@pytest.fixture(scope="module")
def demo_manifest():
    from idvid.demo import build_demo

    return build_demo()


def test_statistics_are_deterministic_and_normalise_the_data(demo_manifest):
    sizes = ("haar", 2, 5, 2, 64, 64)
    first = codec_statistics(demo_manifest, *sizes, cache=False)
    assert first == codec_statistics(demo_manifest, *sizes, cache=False)  # bit for bit
    assert len(first["mean"]) == 48 and min(first["std"]) > 0
    from idvid.data.dataset import IdentityVideoDataset

    codec = LatentCodec("haar", 2, first, scale="per_channel")
    dataset = IdentityVideoDataset(demo_manifest, 5, 2, 64, 64, seed=0)
    latents = torch.cat([codec.encode(dataset[i]["video"].unsqueeze(0)) for i in range(len(dataset))])
    per_channel = latents.transpose(0, 2).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(48), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(48), atol=1e-3, rtol=0)


@pytest.mark.parametrize("config", ["cogvideox_toy", "wan_toy"])
def test_adapter_with_codec_round_trips_through_the_backbone_contract(config):
    cfg = compose_config([f"backbone={config}", "data=demo", "data.num_frames=5", "data.frame_stride=2"])
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    assert node["vae"] is None and len(node["codec"]["statistics"]["mean"]) == 48
    torch.manual_seed(0)
    backbone = build(PluginKind.BACKBONE, node.pop("name"), **node)
    info = backbone.info
    assert (info.latent_channels, info.vae_spatial_compression, info.vae_temporal_compression) == (48, 4, 1)
    frames, height, width = backbone.default_video_size
    assert backbone.latent_shape(2, frames, height, width) == (2, frames, 48, height // 4, width // 4)
    video = real_frames()
    latents = backbone.encode_video(video)
    assert latents.shape == (1, 2, 48, 16, 16)
    torch.testing.assert_close(backbone.decode_latents(latents), video.clamp(-1, 1), atol=1e-5, rtol=0)
    # the contract's forward runs on codec latents: the prediction has the latent's shape
    text = backbone.encode_text(["a person"])
    prediction = backbone(latents, torch.tensor([500]), text)
    assert prediction.shape == latents.shape


@pytest.mark.parametrize("config", ["cogvideox_toy", "wan_toy"])
def test_a_codec_backbone_with_pretrained_weights_is_refused_naming_the_scale_that_takes_them(config, tmp_path):
    # What `fit ... backbone.pretrained=DIR` composes at the default scale (toy), here on the demo's clips.
    overrides = ["scale=toy", f"backbone={config}", f"backbone.pretrained={tmp_path}", "data=demo", "data.num_frames=5"]
    cfg = compose_config(overrides)
    node = OmegaConf.to_container(cfg.backbone, resolve=True)
    with pytest.raises(
        ValueError, match=r"backbone.codec replaces the VAE.*a run from pretrained weights adds scale=tiny"
    ):
        build(PluginKind.BACKBONE, node.pop("name"), **node)


def test_shared_scale_divides_every_channel_by_the_rms_std():
    codec = LatentCodec("haar", 1, {"mean": [0.0] * 12, "std": [1.0] * 6 + [3.0] * 6})
    torch.testing.assert_close(codec.std.flatten(), torch.full((12,), 5.0**0.5))
    with pytest.raises(ValueError, match="scale='global'"):
        LatentCodec("haar", 1, scale="global")
