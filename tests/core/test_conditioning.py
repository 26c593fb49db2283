"""Core conditioners: face_embedding, and which conditioners can run at sampling time."""

from __future__ import annotations

import uuid

import hydra
import lightning as L
import pytest
import torch

from idvid.conditioning import SAMPLING_BATCH_KEYS, Conditioner
from idvid.conditioning.face_embedding import FaceEmbedding
from idvid.errors import UserError
from idvid.randomness import BatchRandom
from idvid.registry import REGISTRIES, PluginKind, register_conditioner

from ..conftest import compose_config


def test_face_embedding_is_the_references_identity_embedding():
    embedding = torch.randn(3, 128)
    conditioner = FaceEmbedding(None)
    out = conditioner({"ref_embedding": embedding.double()}, None, BatchRandom(torch.Generator()))
    assert set(out) == set(conditioner.produces) == {"face_embedding"}
    assert out["face_embedding"].dtype == torch.float32 and torch.equal(out["face_embedding"], embedding)
    unit = FaceEmbedding(None, normalize=True)({"ref_embedding": embedding}, None, None)["face_embedding"]
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match=r"ref_embedding has shape \(3, 2, 64\); face_embedding expects \[B, D\]"):
        conditioner({"ref_embedding": torch.zeros(3, 2, 64)}, None, None)


def test_face_embedding_reads_only_what_sampling_has():
    assert set(FaceEmbedding.reads) <= set(SAMPLING_BATCH_KEYS)


def test_the_core_face_embedding_config_feeds_an_identity_injector_on_the_demo_data():
    cfg = compose_config(["experiment=baseline", "conditioners=face_embedding"])
    L.seed_everything(0)
    model = hydra.utils.instantiate(cfg.model)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    conditions = model.conditions_for(batch, BatchRandom(torch.Generator().manual_seed(0)))
    assert conditions["face_embedding"].shape == (batch["video"].shape[0], 128)  # dlib's embedding on the demo
    assert torch.equal(conditions["face_embedding"], batch["ref_embedding"].float())


@pytest.fixture
def training_only_conditioner():
    name = f"test_lab.masked_{uuid.uuid4().hex[:8]}"

    @register_conditioner(name)
    class FaceMaskArea(Conditioner):
        produces = ("mask_area",)
        reads = ("face_mask",)  # per-frame annotation: training data only

        def forward(self, batch, backbone, random):
            return {"mask_area": batch["face_mask"].flatten(1).mean(1)}

    yield name
    REGISTRIES[PluginKind.CONDITIONER]._entries.pop(name, None)


def test_sampling_refuses_a_conditioner_that_needs_training_only_entries(training_only_conditioner):
    cfg = compose_config(["experiment=baseline", f"+conditioners.area={{name: {training_only_conditioner}}}"])
    model = hydra.utils.instantiate(cfg.model).eval()
    batch = {"ref_image": torch.zeros(1, 3, 32, 32), "ref_embedding": torch.zeros(1, 128), "caption": ["x"]}
    with pytest.raises(UserError, match="cannot run at sampling time") as error:
        model.generate(batch, 9, 32, 32, num_inference_steps=1)
    message = str(error.value)
    assert "area (FaceMaskArea) reads ['face_mask']" in message
    assert "['caption', 'ref_embedding', 'ref_image']" in message
