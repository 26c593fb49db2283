"""Encoder caches (text, VAE posteriors, identity features): same losses, reused, invalidated by changes."""

from __future__ import annotations

import os

import hydra
import pytest
import torch

from idvid.data.datamodule import collate
from idvid.data.dataset import IdentityVideoDataset
from idvid.randomness import BatchRandom
from idvid.training.feature_cache import FeatureCache


def loss_of(model, batch) -> torch.Tensor:
    torch.manual_seed(0)  # a plugin's nn.Dropout draws from the global generator
    with torch.no_grad():
        return model.compute_loss(batch, BatchRandom(torch.Generator().manual_seed(7)))["loss"]


@pytest.mark.needs_plugin("idvid_consisid")
def test_cached_encoders_give_the_same_loss_and_are_reused_then_invalidated(demo_manifest, tmp_path, compose_cfg):
    model = hydra.utils.instantiate(compose_cfg(["experiment=plan_c"]).model).eval()
    dataset = IdentityVideoDataset(demo_manifest, num_frames=9, height=64, width=64)
    batch = collate([dataset[(0, 0)], dataset[(1, 3)]])
    reference = loss_of(model, batch)  # no cache: the encoders run every step

    calls = {"text": 0}
    encode_text = model.backbone.encode_text

    def counting_encode_text(captions):
        calls["text"] += 1
        return encode_text(captions)

    model.backbone.encode_text = counting_encode_text
    model.conditioners["identity"].clip.register_forward_hook(lambda *_: calls.__setitem__("clip", calls["clip"] + 1))
    calls["clip"] = 0
    model.feature_cache = FeatureCache(tmp_path / "features")
    first = loss_of(model, batch)
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-6)  # same draws, same loss
    # 2 posteriors + 2 captions + 2 identity features, each encoder run once for the batch
    assert model.feature_cache.misses == 6 and calls["text"] == 1 and calls["clip"] == 1

    # "A second fit": a new cache object on the same folder computes nothing.
    model.feature_cache = FeatureCache(tmp_path / "features")
    calls["text"] = calls["clip"] = 0
    torch.testing.assert_close(loss_of(model, batch), reference, rtol=1e-5, atol=1e-6)
    assert model.feature_cache.misses == 0 and model.feature_cache.hits == 6
    assert calls["text"] == calls["clip"] == 0

    # Another window of a clip, or an edited video file, is a different input: recomputed.
    os.utime(dataset.entries[3]["video"], ns=(1, 1))  # the second item: (draw 1, clip 3)
    edited = IdentityVideoDataset(demo_manifest, num_frames=9, height=64, width=64)
    loss_of(model, collate([edited[(0, 0)], edited[(1, 3)]]))
    assert model.feature_cache.misses == 1  # the edited clip's posterior; captions and reference pixels are unchanged
    assert not list((tmp_path / "features").rglob(".tmp-*"))  # every entry was renamed into place
