"""magicme.subject_mask_loss: the loss sees only the subject's mask (CLIPSeg or the face-mask fallback)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from idvid_magicme.data import OnePersonDataModule
from idvid_magicme.masked_loss import ClipSegSegmenter, SubjectMaskLoss
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, PreTrainedTokenizerFast

from idvid.errors import ConfigError, MissingFileError
from idvid.faces import Face
from idvid.faces.parsing import BiSeNet, FaceParser
from idvid.randomness import BatchRandom
from idvid.training.losses import WeightedMSELoss
from idvid.training.recipe import Recipe

LATENT = (2, 3, 4, 8, 8)  # [B, f, C, h, w]


def video_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    face_mask = torch.zeros(2, 9, 1, 32, 32)
    face_mask[:, :, :, 8:24, 12:28] = 1.0  # a box in every frame
    face_mask[1] = 0.0  # sample 1: no face found
    return {"video": torch.rand(2, 9, 3, 32, 32, generator=generator) * 2 - 1, "face_mask": face_mask}


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory):
    """A tiny random CLIPSeg with a word-level tokenizer, saved as a local folder."""
    folder = tmp_path_factory.mktemp("clipseg")
    vocab = {"<pad>": 0, "<unk>": 1, "person": 2, "a": 3, "face": 4}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    config = CLIPSegConfig(
        text_config={
            "vocab_size": 5,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 8,
            "pad_token_id": 0,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"size": 32}')
    return folder


def test_a_loss_change_outside_the_mask_does_not_move_the_loss(caplog):
    with caplog.at_level(logging.INFO, logger="idvid_magicme.masked_loss"):
        recipe = Recipe({"subject": SubjectMaskLoss(fallback="face_mask")})  # no segmenter: the batch's face masks
    assert "using the batch's face masks" in caplog.text
    random = BatchRandom(torch.Generator().manual_seed(0))
    batch = recipe.on_batch(video_batch(), random)
    assert batch["subject_mask_source"] == "face_mask"
    mask = recipe.loss_mask(batch, LATENT, random)
    assert mask.shape == (2, 3, 1, 8, 8)
    assert 0 < mask[0].sum() < mask[0].numel() and torch.equal(mask[1], torch.ones_like(mask[1]))  # empty: full frame
    prediction, target = torch.randn(LATENT), torch.randn(LATENT)
    weight, loss = torch.ones(2), WeightedMSELoss()
    outside = (mask[:1] == 0).float().expand(1, *LATENT[1:])
    change = torch.zeros(LATENT)
    change[:1] = 5.0 * outside  # sample 0, everywhere its mask is 0
    assert torch.equal(loss(prediction + change, target, weight, mask), loss(prediction, target, weight, mask))
    inside = torch.zeros(LATENT)
    inside[:1] = 5.0 * (1 - outside)
    assert not torch.equal(loss(prediction + inside, target, weight, mask), loss(prediction, target, weight, mask))


def test_clipseg_from_a_local_folder_gives_the_mask(tiny_clipseg, caplog):
    with caplog.at_level(logging.INFO, logger="idvid_magicme.masked_loss"):
        step = SubjectMaskLoss(segmenter=str(tiny_clipseg), prompt="person", threshold=0.5)
    assert f"CLIPSeg from {tiny_clipseg}" in caplog.text
    batch = video_batch()
    out = step.on_batch(dict(batch), BatchRandom(torch.Generator().manual_seed(0)))
    assert out["subject_mask_source"] == "clipseg:person"
    masks = out["subject_mask"]
    assert masks.shape == (2, 9, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    expected = ClipSegSegmenter(tiny_clipseg, "person", 0.5)(batch["video"])
    assert torch.equal(masks, expected)  # the segmenter's mask, not the face mask
    # the segmenter is frozen and never asks for gradients
    assert not any(p.requires_grad for p in step.segmenter.model.parameters())


def test_a_missing_segmenter_folder_and_a_batch_without_masks_are_named(tmp_path):
    with pytest.raises(MissingFileError, match=rf"(?s)CLIPSeg folder not found.*{tmp_path / 'nope'}.*segmenter=null"):
        SubjectMaskLoss(segmenter=str(tmp_path / "nope"))
    no_masks = {"video": torch.zeros(1, 9, 3, 8, 8)}
    with pytest.raises(ConfigError, match="fallback=face_mask and the batch carries no face_mask"):
        SubjectMaskLoss(fallback="face_mask").on_batch(no_masks, BatchRandom(torch.Generator()))
    with pytest.raises(ConfigError, match=r"(?s)head fallback needs the batch's face points.*preprocess"):
        SubjectMaskLoss().on_batch(no_masks, BatchRandom(torch.Generator()))
    with pytest.raises(ConfigError, match="(?s)fallback=parser needs parser_weights.*parsing_bisenet.pth"):
        SubjectMaskLoss(fallback="parser")
    with pytest.raises(ConfigError, match="fallback='sam' is not one of"):
        SubjectMaskLoss(fallback="sam")
    with pytest.raises(ConfigError, match=r"threshold=1.5 is not in \(0, 1\)"):
        SubjectMaskLoss(threshold=1.5)


@pytest.fixture(scope="module")
def astronaut_batch():
    """A demo batch of the astronaut's clip with its face points (9 frames, 64x64)."""
    data = OnePersonDataModule(identity="astronaut-0", num_frames=9, height=64, width=64)
    data.setup()
    return next(iter(data.train_dataloader()))


def test_head_fallback_grows_the_landmark_hull_to_the_head(astronaut_batch, caplog):
    with caplog.at_level(logging.INFO, logger="idvid_magicme.masked_loss"):
        step = SubjectMaskLoss()  # the default offline fallback
    assert "using the head mask (landmark hull grown 1.5x)" in caplog.text
    out = step.on_batch(dict(astronaut_batch), BatchRandom(torch.Generator().manual_seed(0)))
    assert out["subject_mask_source"] == "head_mask:landmark_hull_x1.5"
    head, face = out["subject_mask"], astronaut_batch["face_mask"]
    assert head.shape == face.shape and set(head.unique().tolist()) <= {0.0, 1.0}
    has_face = astronaut_batch["frame_has_face"].bool()
    assert (head.flatten(2).sum(-1)[has_face] > 0).all()
    assert head.sum() > 1.5 * face.sum()  # the head, not the face alone
    assert (head * face).sum() >= 0.9 * face.sum()  # around the face
    assert head.mean() < 0.9  # and not the whole frame


def test_parser_fallback_parses_every_frame_with_bisenet(astronaut_batch, tmp_path, caplog):
    weights = tmp_path / "parsing_bisenet.pth"
    torch.manual_seed(0)
    torch.save(BiSeNet(width=8).state_dict(), weights)
    with caplog.at_level(logging.INFO, logger="idvid_magicme.masked_loss"):
        step = SubjectMaskLoss(fallback="parser", parser_weights=str(weights), parser_width=8)
    assert "using the BiSeNet face parser" in caplog.text
    out = step.on_batch(dict(astronaut_batch), BatchRandom(torch.Generator().manual_seed(0)))
    assert out["subject_mask_source"] == "bisenet:parsing_bisenet.pth"
    parser = FaceParser(weights, network=BiSeNet(width=8))
    frame = ((astronaut_batch["video"][0, 0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    box, kps = astronaut_batch["frame_boxes"][0, 0].numpy(), astronaut_batch["frame_kps"][0, 0].numpy()
    expected = parser.parse_mask(frame, Face(box=tuple(map(float, box)), score=1.0, kps=kps))
    assert np.array_equal(out["subject_mask"][0, 0, 0].numpy(), expected.astype(np.float32))
