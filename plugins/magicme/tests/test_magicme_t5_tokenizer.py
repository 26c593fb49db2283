"""ID tokens with a real T5 / UMT5 sentencepiece tokenizer folder (trained here, offline) instead of the demo's."""

from __future__ import annotations

import io

import hydra
import lightning as L
import pytest
import sentencepiece
import torch
from diffusers import WanPipeline
from idvid_magicme.id_tokens import save_id_tokens
from transformers import AutoTokenizer, T5Tokenizer

from idvid.verbs.convert import load_into
from tests.conftest import compose_config

CORPUS = [
    "a person walking in the park",
    "a photo of a person smiling at the camera",
    "a video of a woman and a man talking in the rain",
    "the camera slowly rotates around the person",
] * 20
PROMPT = "a photo of <id> walking in the rain"


@pytest.fixture(scope="module")
def t5_tokenizer_folder(tmp_path_factory):
    """A sentencepiece unigram model in T5's layout (pad 0, eos 1, unk 2, sentinels), saved as a tokenizer folder."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,  # a tiny corpus: at most 40 pieces
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(pieces.id_to_piece(i), pieces.get_score(i)) for i in range(pieces.get_piece_size())]
    folder = tmp_path_factory.mktemp("t5") / "tokenizer"
    T5Tokenizer(vocab=vocab, extra_ids=4).save_pretrained(folder)
    reread = AutoTokenizer.from_pretrained(folder)
    assert reread("a person walking").input_ids == [*pieces.encode("a person walking"), pieces.eos_id()]
    return folder


def pipeline_folder(backbone: str, tokenizer_folder, out):
    """The tiny backbone's parts, with a text encoder sized to the T5 tokenizer, as a local pipeline folder."""
    L.seed_everything(0)
    tiny = hydra.utils.instantiate(compose_config(["experiment=baseline", f"backbone={backbone}"]).model).backbone
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    encoder_config = type(tiny.text_encoder.config)(
        **{**tiny.text_encoder.config.to_dict(), "vocab_size": len(tokenizer)}
    )
    text_encoder = type(tiny.text_encoder)(encoder_config)
    if backbone == "wan_tiny":
        WanPipeline(tokenizer, text_encoder, tiny.vae, tiny.scheduler, tiny.transformer).save_pretrained(out)
    else:
        for name, part in [("transformer", tiny.transformer), ("vae", tiny.vae), ("scheduler", tiny.scheduler)]:
            part.save_pretrained(out / name)
        text_encoder.save_pretrained(out / "text_encoder")
        tokenizer.save_pretrained(out / "tokenizer")
    return out


@pytest.mark.parametrize("backbone", ["cogvideox_tiny", "wan_tiny"])
def test_id_tokens_add_expand_and_round_trip_through_a_t5_tokenizer(backbone, t5_tokenizer_folder, tmp_path):
    folder = pipeline_folder(backbone, t5_tokenizer_folder, tmp_path / "pipeline")
    base = ["experiment=baseline", f"backbone={backbone}", f"backbone.pretrained={folder}"]
    tokens = "+injectors.id_tokens={name: magicme.id_tokens, num_tokens: 3, init_text: person}"
    module = hydra.utils.instantiate(compose_config([*base, tokens]).model)
    tokenizer = module.backbone.tokenizer
    assert isinstance(tokenizer, T5Tokenizer)  # the folder's sentencepiece tokenizer, not the demo's word-level one
    injector = module.plan.injectors["id_tokens"]
    expanded = module.backbone.expand_placeholders([PROMPT])[0]
    assert expanded == "a photo of <id_0> <id_1> <id_2> walking in the rain"
    ids = tokenizer(expanded).input_ids
    new_ids = tokenizer.convert_tokens_to_ids(injector.tokens)
    assert [i for i in ids if i in new_ids] == new_ids  # each one token, never split into sentencepiece pieces
    assert tokenizer.unk_token_id not in ids
    # the rows start at the mean embedding of init_text's pieces
    person = tokenizer("person", add_special_tokens=False).input_ids
    table = module.backbone.text_token_embeddings.table
    assert torch.allclose(injector.vectors.detach(), table.weight[person].mean(0).expand(3, -1))
    with torch.no_grad():
        injector.vectors.normal_()
    expected = module.backbone.encode_text([PROMPT])
    path = save_id_tokens(injector, tmp_path / "id_tokens.safetensors")
    # into a fresh model of the same folder: by the injector's file option, and loaded before sampling
    from_file = hydra.utils.instantiate(compose_config([*base, f"{tokens[:-1]}, file: '{path}'}}"]).model)
    assert torch.equal(from_file.backbone.encode_text([PROMPT]), expected)
    plain = hydra.utils.instantiate(compose_config(base).model)
    load_into(plain, [f"magicme-id-tokens={path}"])
    assert torch.equal(plain.backbone.encode_text([PROMPT]), expected)
