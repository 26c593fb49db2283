"""magicme.id_tokens: K new text tokens through the backbone contract; only their rows train; the file round-trips."""

from __future__ import annotations

import cv2
import hydra
import lightning as L
import pytest
import skimage.data
import torch
from hydra.errors import InstantiationException
from idvid_magicme.id_tokens import ExtendedIdTokens, TableWithLearnedRows, read_id_tokens, save_id_tokens
from safetensors.torch import save_file

from idvid.errors import ConfigError
from idvid.interop import load_module, save_module
from idvid.randomness import BatchRandom
from idvid.verbs.convert import export, load_into
from idvid.verbs.sample import sample
from tests.conftest import compose_config

BACKBONES = ["cogvideox_tiny", "wan_tiny"]  # T5 and UMT5 text encoders, each with the demo's word-level tokenizer
PROMPT = "a video of <id> walking in the park"  # words of the demo vocabulary


def id_token_model(backbone: str, *extra: str):
    overrides = [
        "experiment=baseline",
        f"backbone={backbone}",
        "+injectors.id_tokens={name: magicme.id_tokens, num_tokens: 3}",
        "model.trainable=injectors",
        *extra,
    ]
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(overrides).model)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_placeholder_expands_to_new_whole_tokens_read_from_the_injector(backbone):
    module = id_token_model(backbone)
    injector, tokenizer = module.plan.injectors["id_tokens"], module.backbone.tokenizer
    assert injector.tokens == ["<id_0>", "<id_1>", "<id_2>"]
    expanded = module.backbone.expand_placeholders([PROMPT])[0]
    assert expanded == "a video of <id_0> <id_1> <id_2> walking in the park"
    ids = tokenizer(expanded).input_ids
    new_ids = tokenizer.convert_tokens_to_ids(injector.tokens)
    assert [i for i in ids if i in new_ids] == new_ids  # each a single token, never split into pieces
    assert tokenizer.unk_token_id not in ids
    table = module.backbone.text_token_embeddings
    assert isinstance(table, TableWithLearnedRows)
    # the rows start at the mean embedding of init_text ("person"), and change with the injector's vectors
    person = table.table.weight[tokenizer.convert_tokens_to_ids(["person"])[0]]
    assert torch.allclose(injector.vectors.detach(), person.expand(3, -1))
    before = module.backbone.encode_text([PROMPT])
    with torch.no_grad():
        injector.vectors[1] += 1.0
    after = module.backbone.encode_text([PROMPT])
    assert not torch.equal(before, after)
    assert torch.equal(module.backbone.encode_text(["a person"]), module.backbone.encode_text(["a person"]))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_changes_only_the_new_rows(backbone):
    module = id_token_model(backbone).train()
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"plan.injectors.id_tokens.vectors"}
    frozen = {name: p.detach().clone() for name, p in module.named_parameters() if not p.requires_grad}
    rows = module.plan.injectors["id_tokens"].vectors.detach().clone()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    video = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    for step in range(2):
        random = BatchRandom(torch.Generator().manual_seed(step))
        loss = module.compute_loss({"video": video, "caption": [PROMPT]}, random)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(module.plan.injectors["id_tokens"].vectors, rows)
    for name, parameter in module.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), f"{name} changed"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_exported_file_reloads_into_a_fresh_model_with_the_same_text_embeddings(backbone, tmp_path):
    module = id_token_model(backbone)
    with torch.no_grad():
        module.plan.injectors["id_tokens"].vectors.normal_()
    expected = module.backbone.encode_text([PROMPT])
    export(str(save_module(module, tmp_path / "m.ckpt")), "magicme-id-tokens", str(tmp_path / "out"))
    path = tmp_path / "out" / "id_tokens.safetensors"
    assert path.stat().st_size < 2048  # 3 tokens x 32 floats + the token strings
    fresh = id_token_model(backbone, f"++injectors.id_tokens.file={path}")
    assert torch.equal(fresh.backbone.encode_text([PROMPT]), expected)
    # and a checkpoint carries them too
    assert torch.equal(load_module(tmp_path / "m.ckpt").backbone.encode_text([PROMPT]), expected)


def test_a_file_for_another_text_encoder_width_is_refused(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file({"vectors": torch.zeros(3, 4096)}, str(path), metadata={"tokens": '["<a>", "<b>", "<c>"]'})
    wrong_width = "learned for a text encoder 4096 wide; this backbone's is 32"
    with pytest.raises(InstantiationException, match=wrong_width) as e:
        id_token_model("cogvideox_tiny", f"++injectors.id_tokens.file={path}")
    assert isinstance(e.value.__cause__, ConfigError)
    with pytest.raises(ConfigError, match="not an ID-token file"):
        save_file({"other": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        read_id_tokens(tmp_path / "x.safetensors", 32)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="num_tokens=0 must be a positive integer"):
        ExtendedIdTokens(compose_info(), num_tokens=0)
    with pytest.raises(InstantiationException, match="init_text='zyxwv' has words the tokenizer does not know"):
        id_token_model("cogvideox_tiny", "++injectors.id_tokens.init_text=zyxwv")


def compose_info():
    return id_token_model("cogvideox_tiny").backbone.info


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_placeholder_prompt_without_id_tokens_is_refused(backbone):
    L.seed_everything(0)
    plain = hydra.utils.instantiate(compose_config(["experiment=baseline", f"backbone={backbone}"]).model)
    expected = r"(?s)names <id>, but this model has no text tokens for it.*placeholders: none"
    with pytest.raises(ConfigError, match=expected):
        plain.backbone.encode_text([PROMPT])
    assert plain.backbone.encode_text(["a person <unk>"]).shape[0] == 1  # the tokenizer's own <...> tokens pass


@pytest.fixture(scope="module")
def exported_id_tokens(tmp_path_factory):
    """(an ID-token file with random rows, the text embeddings of PROMPT it gives) on cogvideox_tiny."""
    module = id_token_model("cogvideox_tiny")
    with torch.no_grad():
        module.plan.injectors["id_tokens"].vectors.normal_()
    path = save_id_tokens(module.plan.injectors["id_tokens"], tmp_path_factory.mktemp("tokens") / "person.safetensors")
    return path, module.backbone.encode_text([PROMPT])


def test_sample_loads_an_id_token_file_into_a_checkpoint_trained_without_them(exported_id_tokens, tmp_path):
    path, expected = exported_id_tokens
    L.seed_everything(0)  # the same random backbone as id_token_model's
    plain = hydra.utils.instantiate(compose_config(["experiment=baseline", "backbone=cogvideox_tiny"]).model)
    load_into(plain, [f"magicme-id-tokens={path}"])
    assert torch.equal(plain.backbone.encode_text([PROMPT]), expected)
    assert "person" in plain.plan.injectors and plain.backbone.encode_text(["a person"]).shape[0] == 1
    # a model that has the same tokens gets its rows replaced
    trained = id_token_model("cogvideox_tiny")
    load_into(trained, [f"magicme-id-tokens={path}"])
    assert torch.equal(trained.backbone.encode_text([PROMPT]), expected)
    # through the verb: the checkpoint samples the placeholder prompt only with --load
    astronaut = tmp_path / "astronaut.png"
    cv2.imwrite(str(astronaut), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    checkpoint = str(save_module(_plain_model(), tmp_path / "p.ckpt"))
    options = dict(checkpoint=checkpoint, image=str(astronaut), prompt=PROMPT, num_frames=9, height=32, width=32)
    with pytest.raises(ConfigError, match=r"(?s)names <id>, but this model has no text tokens.*--load FORMAT=FILE"):
        sample(**options, out=str(tmp_path / "a.mp4"), steps=1)
    written = sample(**options, out=str(tmp_path / "b.mp4"), steps=1, load=[f"magicme-id-tokens={path}"])
    assert written.is_file()


def _plain_model():
    L.seed_everything(0)
    return hydra.utils.instantiate(compose_config(["experiment=baseline", "backbone=cogvideox_tiny"]).model)


def test_loading_a_file_of_another_width_or_format_is_a_named_error(tmp_path):
    wide = tmp_path / "wide.safetensors"
    save_file({"vectors": torch.zeros(3, 4096)}, str(wide), metadata={"tokens": '["<a>", "<b>", "<c>"]'})
    plain = _plain_model()
    with pytest.raises(ConfigError, match="learned for a text encoder 4096 wide; this backbone's is 32"):
        load_into(plain, [f"magicme-id-tokens={wide}"])
    with pytest.raises(ConfigError, match="(?s)Format 'idvid' cannot be loaded into a model.*magicme-id-tokens"):
        load_into(plain, [f"idvid={wide}"])
    with pytest.raises(ConfigError, match="is not FORMAT=FILE"):
        load_into(plain, [str(wide)])
