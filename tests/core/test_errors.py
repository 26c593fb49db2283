"""Errors a user can cause name the problem and the fix, and print as the kit's message alone.

Issue 15 item 7 (wrong value types, a bad manifest, damaged checkpoints, bad `convert` folders) and
issue 11 item 8 (a plugin's own error, two producers of a condition, clean start-up refusals, one face
backend setting in every verb). The verbs run in-process (``idvid.cli.main``), as a user types them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from idvid import errors
from idvid.cli import main
from idvid.errors import ConfigError, ConfigKeyError, MissingFileError, reported_as_user_errors
from idvid.injection import InjectionPlan, TokenInjector
from idvid.interop import build_for_training, load_module
from idvid.registry import REGISTRIES, PluginKind, build, register_injector
from idvid.verbs.fit import _resolve_ckpt_path

from ..conftest import EXPERIMENTS, TINY_SCALE, compose_config
from .helpers import TINY_INFO

INFO = TINY_INFO


def run_verb(capsys, *args: str) -> str:
    """Run ``python -m idvid <args>`` in-process; it must stop with exit status 1; returns its stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    assert stopped.value.code == 1
    return capsys.readouterr().err


def assert_clean(message: str) -> None:
    """The kit's message alone: no traceback, no exception repr, no literal backslash-n."""
    assert "Traceback" not in message and "\\n" not in message, message
    assert "InterpolationResolutionError" not in message and "full_key" not in message, message
    assert message.startswith("idvid ") and ": error: " in message.splitlines()[0], message


# --------------------------------------------------------------------------- value types at start-up


def test_wrong_value_types_are_named_with_the_expected_type_before_anything_is_built(tmp_path, capsys):
    err = run_verb(
        capsys, "fit", "experiment=baseline", TINY_SCALE, "trainer.max_steps=abc", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert_clean(err)
    assert "trainer.max_steps='abc' (str): lightning.Trainer expects an integer" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # stopped before the run started
    # preprocess checks its settings the same way, before any video.
    err = run_verb(
        capsys, "preprocess", f"data.raw={tmp_path}", f"data.out={tmp_path / 'out'}", "filters.min_face_size=big"
    )
    assert_clean(err)
    assert "filters.min_face_size='big' (str): idvid.preprocess.filters.FilterSettings expects a number or null" in err
    # evaluate and ablate have no class to read types from: their shipped defaults say what is a number.
    here = [f"videos={tmp_path}", f"refs={tmp_path}", f"prompts={tmp_path / 'p.tsv'}", f"out={tmp_path / 'eval'}"]
    err = run_verb(capsys, "evaluate", *here, "num_frames=abc")
    assert_clean(err)
    assert "num_frames='abc' (str): expects a number, like its default num_frames=16" in err
    err = run_verb(capsys, "ablate", f"out={tmp_path / 'ablation'}", "eval_set.steps=many")
    assert "eval_set.steps='many' (str): expects a number, like its default eval_set.steps=50" in err
    assert not list((tmp_path / "ablation").glob("plan_*"))  # Hydra made the run dir; nothing ran in it
    from idvid.verbs.argument_types import check_argument_types

    cfg = compose_config(
        [
            "data.batch_size=2.5",
            "trainer.fast_dev_run=yes",
            "trainer.limit_val_batches=true",
            "callbacks.checkpoint.every_n_train_steps=x",
            "optimizer.weight_decay=abc",
        ],
        run_dir=tmp_path,
    )
    with pytest.raises(errors.ConfigTypeError) as refused:
        check_argument_types(cfg)
    message = str(refused.value)
    for expected in (
        "data.batch_size=2.5 (float): idvid.data.datamodule.IdentityVideoDataModule expects an integer",
        "trainer.fast_dev_run='yes' (str): lightning.Trainer expects an integer or true or false",
        "trainer.limit_val_batches=True (bool): lightning.Trainer expects a number or null",
        "callbacks.checkpoint.every_n_train_steps='x' (str)",
        "optimizer.weight_decay='abc' (str): torch.optim.AdamW expects a number",
    ):
        assert expected in message


@pytest.mark.needs_plugin("idvid_consisid")
def test_every_shipped_config_passes_the_type_check(tmp_path):
    from idvid.verbs.argument_types import check_argument_types

    presets = ["trainer=gpu", "trainer=ddp", "trainer=deepspeed_zero2", "trainer=deepspeed_zero2_offload"]
    for override in [f"experiment={experiment}" for experiment in EXPERIMENTS] + presets:
        check_argument_types(compose_config([override], run_dir=tmp_path))
    # Numbers where the class takes them: an integer for a float setting, a fraction for limit_val_batches.
    check_argument_types(
        compose_config(["trainer.gradient_clip_val=1", "trainer.limit_val_batches=0.5"], run_dir=tmp_path)
    )


# --------------------------------------------------------------------------- a bad manifest


@pytest.mark.needs_plugin("idvid_consisid")
def test_a_bad_manifest_is_named_instead_of_the_interpolation_that_reads_it(tmp_path, capsys):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    missing = tmp_path / "nowhere.jsonl"
    # Every plan derives a width from the manifest (${idvid.face_embedding_dim:${data.manifest}}).
    experiment = "plan_c" if "plan_c" in EXPERIMENTS else "baseline"
    err = run_verb(capsys, "fit", f"experiment={experiment}", TINY_SCALE, f"data.manifest={missing}", run)
    if experiment == "plan_c":
        assert_clean(err)
        assert f"manifest not found: {missing}" in err.splitlines()[0]

    no_annotations = tmp_path / "manifest.jsonl"
    no_annotations.write_text(json.dumps({"id": "a", "video": "a.mp4", "annotations": "a.npz", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"{no_annotations}:1: annotations file not found: .*a\.npz"):
        from idvid.resolvers import face_embedding_dim

        face_embedding_dim(str(no_annotations))


# --------------------------------------------------------------------------- damaged checkpoints


def write_checkpoint(path: Path, size: int = 4000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.arange(size, dtype=torch.float32)}, "hyper_parameters": {}}, path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_checkpoint_names_itself_and_the_previous_complete_one(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    older = write_checkpoint(folder / "step000050.ckpt")
    previous = write_checkpoint(folder / "step000100.ckpt")
    truncate(write_checkpoint(folder / "step000150.ckpt"))  # newer, but damaged too: never the answer
    last = truncate(write_checkpoint(folder / "last.ckpt"))
    (folder / "last.ckpt.partial").write_bytes(b"half")
    for path in (older, previous):  # mtimes in save order, whatever the file system's resolution
        path.touch()

    with pytest.raises(errors.CorruptFileError) as resumed:
        _resolve_ckpt_path("last", tmp_path / "run")
    message = str(resumed.value)
    assert f"Checkpoint {last} is truncated or corrupt" in message
    assert f"use ckpt_path={previous}" in message

    with pytest.raises(
        errors.CorruptFileError, match=rf"{re.escape(str(last))}.*\n.*use init_from={re.escape(str(previous))}"
    ):
        build_for_training(OmegaConf.create({"init_from": str(last), "model": {}}))
    # sample and export read checkpoints through load_module.
    with pytest.raises(
        errors.CorruptFileError, match=rf"previous complete checkpoint in that folder is {re.escape(str(previous))}"
    ):
        load_module(last)

    alone = truncate(write_checkpoint(tmp_path / "alone" / "x.ckpt"))
    with pytest.raises(errors.CorruptFileError, match=r"No other complete checkpoint is in .*alone"):
        load_module(alone)


def test_damage_inside_a_checkpoint_is_named_when_torch_reads_it(tmp_path):
    folder = tmp_path / "checkpoints"
    previous = write_checkpoint(folder / "step000001.ckpt")
    damaged = write_checkpoint(folder / "step000002.ckpt")
    data = bytearray(damaged.read_bytes())
    data[200:400] = bytes(b ^ 0xFF for b in data[200:400])  # the archive's index at the end is intact
    damaged.write_bytes(bytes(data))
    previous.touch()
    with pytest.raises(
        errors.CorruptFileError, match=rf"{re.escape(str(damaged))} is truncated or corrupt \(PytorchStreamReader"
    ):
        build_for_training(OmegaConf.create({"init_from": str(damaged), "model": {}}))


# --------------------------------------------------------------------------- diffusers folders (`convert`)


@pytest.fixture
def transformer_folder(tmp_path) -> Path:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=2, sample_width=4, sample_height=4, sample_frames=5, max_text_seq_length=4,
    )  # fmt: skip
    model.save_pretrained(tmp_path / "transformer")
    return tmp_path / "transformer"


def test_diffusers_folders_that_do_not_load_name_the_file_and_the_fix(transformer_folder):
    from diffusers import CogVideoXTransformer3DModel

    from idvid.interop import load_diffusers_model

    assert isinstance(
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder), CogVideoXTransformer3DModel
    )
    config = transformer_folder / "config.json"
    weights = transformer_folder / "diffusion_pytorch_model.safetensors"
    original = config.read_text()

    config.write_text(json.dumps({**json.loads(original), "num_layers": 3}))  # a block more than the weights hold
    missing = rf"{re.escape(str(config))} does not describe the weights next to it. "
    missing += r"Tensors missing from the weights \(\d+\): transformer_blocks\.2\."
    with pytest.raises(errors.CorruptFileError, match=missing):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)
    config.write_text(json.dumps({**json.loads(original), "attention_head_dim": 16}))
    with pytest.raises(errors.CorruptFileError, match=r"Tensors of another shape \(\d+\): .* \(config: "):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)
    config.write_text(json.dumps({**json.loads(original), "attention_head_dim": 3}))  # no model has it
    with pytest.raises(
        errors.CorruptFileError, match=r"does not describe a CogVideoXTransformer3DModel that can be built"
    ):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)

    config.write_text(original[: len(original) // 2])
    with pytest.raises(errors.CorruptFileError, match=rf"{re.escape(str(config))} is not valid JSON"):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)
    config.write_text(original)

    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(errors.CorruptFileError, match=rf"{re.escape(str(weights))} is truncated or corrupt"):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)
    weights.rename(transformer_folder / "diffusion_pytorch_model.bin")
    with pytest.raises(
        MissingFileError,
        match=r"No weights in .*diffusion_pytorch_model\.safetensors.*found diffusion_pytorch_model\.bin",
    ):
        load_diffusers_model(CogVideoXTransformer3DModel, transformer_folder)


@pytest.mark.needs_plugin("idvid_consisid")
def test_convert_reports_a_config_that_is_not_json_as_the_kit_message(transformer_folder, tmp_path, capsys):
    pytest.importorskip("idvid_consisid")  # the format that reads diffusers ConsisID folders is a plugin
    config = transformer_folder / "config.json"
    config.write_text('{"_class_name": "ConsisIDTransformer3DModel",')
    err = run_verb(
        capsys, "convert", "--from", "diffusers-consisid", str(transformer_folder), "--out", str(tmp_path / "x.ckpt")
    )
    assert_clean(err)
    assert f"{config} is not valid JSON" in err


# --------------------------------------------------------------------------- a plugin's own error


@pytest.fixture
def failing_injector():
    name = "test_errors.failing_injector"

    @register_injector(name)
    class FailingInjector(TokenInjector):
        consumes = ()

        def __init__(self, backbone, site="attn_ffn", blocks="all", width: int = 4):
            super().__init__(backbone, site=site, blocks=blocks)
            self.width = width + "1"  # the plugin's own bug: a TypeError that is not about config keys

        def forward(self, block_index, hidden_states, prepared):
            return hidden_states

    yield name
    REGISTRIES[PluginKind.INJECTOR]._entries.pop(name, None)


def test_a_plugins_own_type_error_is_reported_as_the_plugins_with_its_traceback(failing_injector, capsys):
    with pytest.raises(TypeError) as raised:
        build(PluginKind.INJECTOR, failing_injector, backbone=INFO, width=3)
    assert not isinstance(raised.value, ConfigKeyError)
    assert "unsupported operand" in str(raised.value)
    assert raised.traceback[-1].name == "__init__"  # the plugin's own frame, not the registry's

    # Through Hydra (as `fit` builds the model), the verb lets it through with its traceback ...
    node = {"_target_": "idvid.registry.build", "_args_": ["injector", failing_injector], "backbone": INFO, "width": 3}
    with pytest.raises(TypeError, match="unsupported operand"):
        with reported_as_user_errors("fit"):
            hydra.utils.instantiate(node)
    assert f"injector plugin {failing_injector!r}" in capsys.readouterr().err
    # ... while a key the plugin does not take is still a config-key error, printed as the kit's message.
    node = {**node, "widht": 3}
    with pytest.raises(SystemExit):
        with reported_as_user_errors("fit"):
            hydra.utils.instantiate(node)
    err = capsys.readouterr().err
    assert_clean(err)
    assert (
        "from config keys ['backbone', 'widht', 'width']" in err
        and "Its parameters are: backbone, site, blocks, width" in err
    )


# --------------------------------------------------------------------------- start-up refusals


class Producer:
    def __init__(self, *produces: str):
        self.produces = produces


def test_two_producers_of_one_condition_are_refused_naming_both():
    produced = InjectionPlan.produced_conditions({"a": Producer("x", "y"), "b": Producer("z")})
    assert produced == {"x": "a", "y": "a", "z": "b"}
    with pytest.raises(ConfigError, match=r"'y', produced by conditioners a, b\n.*conditioners\.b=null"):
        InjectionPlan.produced_conditions({"a": Producer("x", "y"), "b": Producer("y")})


@pytest.mark.needs_plugin("idvid_consisid")
def test_start_up_refusals_print_as_clean_multi_line_messages(tmp_path, capsys):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    # The baseline has no injector and no conditioner; two copies of one conditioner produce the same conditions.
    twice = ["+conditioners.first={name:reference_latents}", "+conditioners.again={name:reference_latents}"]
    err = run_verb(capsys, "fit", "experiment=baseline", TINY_SCALE, *twice, run)
    assert_clean(err)
    assert "Several conditioners produce the same condition" in err.splitlines()[0]
    assert "    - 'face_latent', produced by conditioners first, again" in err.splitlines()

    # A config that does not resolve is the user's to fix too: OmegaConf's message, without Hydra's traceback.
    err = run_verb(capsys, "fit", "experiment=baseline", TINY_SCALE, "+conditioners.again=${conditioners.nowhere}", run)
    assert "Traceback" not in err and "Interpolation key 'conditioners.nowhere' not found" in err.splitlines()[0]

    if "plan_c" in EXPERIMENTS:  # a plan whose injectors consume what nobody produces
        err = run_verb(capsys, "fit", "experiment=plan_c", TINY_SCALE, "conditioners=none", run)
        assert_clean(err)
        assert err.splitlines()[0].endswith("This plan's injectors consume conditions that no conditioner produces:")
        assert len(err.splitlines()) >= 4


# --------------------------------------------------------------------------- one face backend setting


def test_every_verb_configures_the_face_backend_one_way_and_names_it_for_the_old_spellings(tmp_path, capsys):
    from idvid.evaluation.metrics import face_backend_node
    from idvid.verbs.sample import face_node

    dlib = face_node([])
    assert dlib["name"] == "dlib" and dlib["options"] == {"models_dir": None, "upsample": 1, "min_score": 0.25}
    insightface = face_node(["face=insightface", "face.options.models_dir=/models/antelopev2"])
    assert insightface["name"] == "insightface" and insightface["options"]["models_dir"] == "/models/antelopev2"
    # evaluate and ablate: insightface reads the verb's own models folder unless face.options.models_dir is set.
    models = {"insightface": "/models/antelopev2"}
    assert face_backend_node({"face": {"name": "insightface", "options": {"models_dir": "???"}}, "models": models}) == {
        "name": "insightface",
        "options": {"models_dir": "/models/antelopev2"},
    }

    for cfg_name in ("evaluate", "ablate", "preprocess", "sample"):
        cfg = compose_config_named(cfg_name, ["face=insightface"])
        assert cfg.face.name == "insightface" and "det_size" in cfg.face.options

    new_spelling = "face=dlib|insightface"
    sample = ["sample", "x.ckpt", "--image", "ref.jpg", "--prompt", "p", "--out", str(tmp_path / "v.mp4")]
    for old in (["--face", "insightface"], ["--face-models=/models"]):
        err = run_verb(capsys, *sample, *old)
        assert_clean(err)
        assert f"sample {old[0].split('=')[0]} is the old spelling" in err and new_spelling in err
    for verb, old in (("evaluate", "face.backend=insightface"), ("ablate", "evaluate.face.dlib_models_dir=/m")):
        err = run_verb(capsys, verb, old)
        assert_clean(err)
        assert f"{old.split('=')[0]} is the old spelling" in err and new_spelling in err
    with pytest.raises(ConfigError, match="face.backend is the old spelling"):
        face_backend_node({"face": {"backend": "insightface"}, "models": models})


def compose_config_named(config_name: str, overrides: list[str]):
    from idvid import config_packages

    return config_packages.compose(config_name, overrides)
