"""Model-based metrics on tiny random models built here: CurricularFace IR backbone, CLIP, DINO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idvid.evaluation import clip_metrics
from idvid.evaluation.curricularface import IRBackbone, load_curricularface
from idvid.evaluation.identity import AlignedCropEmbedder, identity_similarity, largest_faces, reference_face

from .models import save_tiny_clip, save_tiny_dino

TINY_IR = {"units": (1, 2, 1, 1), "widths": (8, 8, 16, 16), "embedding_dim": 16, "stem_width": 8}


def test_ir101_has_the_released_state_dict_layout():
    with torch.device("meta"):
        model = IRBackbone()
    keys = model.state_dict().keys()
    assert len(model.body) == 3 + 13 + 30 + 3
    for key in (
        "input_layer.0.weight",
        "input_layer.2.weight",
        "body.3.shortcut_layer.0.weight",  # projection where the width changes (64 -> 128)
        "body.3.shortcut_layer.1.running_mean",
        "body.0.res_layer.3.weight",  # BN, conv, BN, PReLU, conv, BN: TFace's BasicBlockIR
        "body.48.res_layer.5.running_var",
        "output_layer.3.weight",
        "output_layer.4.running_mean",
    ):
        assert key in keys, key
    assert "body.0.shortcut_layer.0.weight" not in keys  # same width: max-pool shortcut, no weights
    assert "output_layer.4.weight" not in keys  # the last BN has no affine parameters
    assert model.output_layer[3].in_features == 512 * 7 * 7 and model.output_layer[3].out_features == 512


def test_curricularface_weights_load_through_the_real_code(tmp_path, analyzer, people):
    torch.manual_seed(0)
    built = IRBackbone(**TINY_IR).eval()
    path = tmp_path / "backbone.bin"
    torch.save({f"module.{k}": v for k, v in built.state_dict().items()}, path)  # as saved from DataParallel
    loaded = load_curricularface(path, **TINY_IR)
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(loaded(faces), built(faces))

    embedder = AlignedCropEmbedder(loaded)
    reference = reference_face(analyzer, people[0][0])
    frames = list(people[0][:3])
    result = identity_similarity(embedder, *reference, frames, largest_faces(analyzer, frames))
    assert embedder.embed(*reference).shape == (16,)
    assert np.linalg.norm(embedder.embed(*reference)) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= result.score <= 1.0 and result.frames_used == 3

    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        load_curricularface(path, units=(1, 1, 1, 1), widths=(8, 8, 16, 32), stem_width=8)
    missing = tmp_path / "nowhere" / "glint360k_curricular_face_r101_backbone.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_curricularface(missing)


def test_clip_metrics_on_a_tiny_random_clip(tmp_path, people):
    clip = clip_metrics.ClipEmbedder(save_tiny_clip(tmp_path / "clip"))
    frames = list(people[0][:4])
    images, text = clip.images(frames), clip.text("a person looking at the camera")
    assert images.shape == (4, 8) and text.shape == (8,)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(4))
    score = clip_metrics.clip_score(clip, frames, "a person looking at the camera")
    assert score == pytest.approx(100 * float((images @ text).mean()), rel=1e-5)
    bgr = clip_metrics.clip_score(clip, frames, "a person looking at the camera", bgr_compat=True)
    swapped = clip.images([f[..., ::-1] for f in frames])
    assert bgr == pytest.approx(100 * float((swapped @ text).mean()), rel=1e-5) and bgr != pytest.approx(score)
    assert clip_metrics.temporal_smoothness(torch.stack([images[0]] * 3)) == pytest.approx(1.0)
    assert clip_metrics.mean_cosine_to(images[0], images[:1]) == pytest.approx(1.0)


def test_dino_on_a_tiny_random_dinov2(tmp_path, people):
    dino = clip_metrics.DinoEmbedder(save_tiny_dino(tmp_path / "dino"))
    embeddings = dino.images(list(people[0][:3]))
    assert embeddings.shape == (3, 16)
    assert clip_metrics.mean_cosine_to(embeddings[0], embeddings[:1]) == pytest.approx(1.0, abs=1e-5)


def test_a_missing_model_folder_names_the_exact_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "clip" / "config.json")):
        clip_metrics.ClipEmbedder(tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match="models.dino"):
        clip_metrics.DinoEmbedder(tmp_path / "dino")
