"""The CogVideoX adapter refuses folders and configs it cannot run, naming why and the fix."""

from __future__ import annotations

import json

import pytest

from idvid.backbones.cogvideox import CogVideoXBackbone

from ..core.helpers import make_backbone


def _folder(tmp_path, pipeline: str, transformer: str) -> str:
    (tmp_path / "transformer").mkdir(parents=True)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": transformer}))
    return str(tmp_path)


def test_a_wan_folder_is_refused_with_the_backbone_to_use(tmp_path):
    with pytest.raises(ValueError, match="is a WanPipeline folder, not a CogVideoX pipeline; use backbone=wan_tiny"):
        CogVideoXBackbone(pretrained=_folder(tmp_path, "WanPipeline", "WanTransformer3DModel"))


def test_a_folder_of_something_else_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names 'FluxTransformer2DModel'.*expected 'CogVideoXTransformer3DModel'"):
        CogVideoXBackbone(pretrained=_folder(tmp_path, "FluxPipeline", "FluxTransformer2DModel"))


def test_mismatched_transformer_and_vae_channels_are_refused(backbone_config):
    transformer = {**backbone_config["transformer"], "out_channels": 8}
    with pytest.raises(ValueError, match="predicts 8 latent channels but the VAE's latent has latent_channels=16"):
        make_backbone({**backbone_config, "transformer": transformer})
