"""The pipeline with the insightface backend (tiny ONNX stand-ins, not face models) and its config errors."""

from __future__ import annotations

import re

import hydra
import numpy as np
import pytest
import torch

from idvid.cli import main
from idvid.data.manifest import load_annotations, read_manifest
from idvid.data.video_io import write_mp4
from idvid.faces import tiny_insightface as tiny
from idvid.interop import build_for_training
from idvid.preprocess import FilterSettings, Preprocessor
from idvid.randomness import BatchRandom

from ..conftest import compose_config
from .conftest import settings_for


def red_square_frames(num_frames: int = 6) -> np.ndarray:
    """320x240 frames with a 16 px red square stepping right one detector cell per frame.

    Letterboxed to 640x480 for the detector (scale 2), the square fills one stride-32 cell, where
    the stand-in detector reports a 32 px "face" with ArcFace-template keypoints.
    """
    frames = np.zeros((num_frames, 240, 320, 3), np.uint8)
    for t in range(num_frames):
        frames[t, 96:112, 128 + 16 * t : 144 + 16 * t] = (255, 0, 0)
    return frames


@pytest.mark.needs_plugin("idvid_consisid")
def test_insightface_backend_sets_the_embedding_width_and_mask_source(tmp_path):
    models = tiny.write_tiny_antelopev2(tmp_path / "antelopev2")
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "square.mp4", red_square_frames(10))
    (raw / "square.txt").write_text("a red square.")
    face = {"name": "insightface", "options": {"models_dir": str(models)}}
    filters = FilterSettings(min_face_size=16, min_valid_fraction=0.5)
    settings = settings_for(raw, tmp_path / "out", face=face, filters=filters)
    summary = Preprocessor(settings).run()
    assert summary["kept"] == 1, summary
    ann = load_annotations(read_manifest(summary["manifest"])[0]["annotations"])
    # The stand-in recognizer is 64 wide: the width comes from the backend, not a constant.
    assert int(ann["embedding_dim"]) == tiny.TINY_EMBEDDING_DIM and ann["embeddings"].shape == (10, 64)
    assert str(ann["mask_source"]) == "box_ellipse"  # no 68 landmarks: the box ellipse
    centres = (ann["boxes"][:, 0] + ann["boxes"][:, 2]) / 2
    np.testing.assert_allclose(np.diff(centres), 16, atol=1)  # the box follows the square

    # The LFE's input width follows the data: 64 (this backend) + the tiny CLIP projection 32,
    # and a ConsisID training step runs on the preprocessed clip.
    cfg = compose_config(["experiment=plan_c", f"data.manifest={summary['manifest']}", "data.batch_size=1"])
    assert cfg.injectors.identity.extractor.id_dim == 64 + cfg.conditioners.identity.clip.config.projection_dim
    datamodule = hydra.utils.instantiate(cfg.data)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["ref_embedding"].shape == (1, 64)
    model = build_for_training(cfg)
    loss = model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    assert torch.isfinite(loss)


def test_missing_insightface_models_fail_the_run_before_any_video(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    write_mp4(raw / "square.mp4", red_square_frames(2))
    for overrides, message in [
        ([f"face.options.models_dir={tmp_path / 'nowhere'}"], r"antelopev2 model files not found in .*nowhere"),
        ([], r"preprocess needs face\.options\.models_dir"),
    ]:
        with pytest.raises(SystemExit):
            main(["preprocess", f"data.raw={raw}", f"data.out={tmp_path / 'out'}", "face=insightface", *overrides])
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out" / "records").exists()
