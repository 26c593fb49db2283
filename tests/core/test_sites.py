"""The CogVideoX adapter: equivalence with diffusers, loading a pipeline folder, its errors; plan checks.

Where each site acts, block selection, gradient checkpointing and widening are checked for every
backbone by the shared suite (tests/backbones/test_backbone_contract.py).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from idvid.backbones.cogvideox import CogVideoXBackbone
from idvid.injection import BlockSelection, InjectionPlan, Site

from ..conftest import compose_config
from .helpers import ConstantInjector, LinearInjector, backbone_inputs, make_backbone, run_backbone


def test_adapter_matches_diffusers_forward(backbone_config):
    backbone = make_backbone(backbone_config)
    latents, timestep, text = backbone_inputs(backbone)
    rotary = backbone.rotary_embedding(*latents.shape[1:2], *latents.shape[3:], latents.device)
    reference = CogVideoXTransformer3DModel.forward(
        backbone.transformer, latents, text, timestep, image_rotary_emb=rotary, return_dict=False
    )[0]
    ours = run_backbone(backbone, inputs=(latents, timestep, text))
    assert ours.shape == reference.shape == (2, 3, 16, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([4], "out of range"),
        ("some", "Unknown block selection"),
        ([1, 1], "repeats"),
        ({"last": 0}, "last: n >= 1"),
        ({"last": 2, "every": 2}, "last: n >= 1"),
    ],
)
def test_bad_block_selection_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        BlockSelection(spec).indices(4)


def test_the_last_blocks_are_all_blocks_on_a_shallower_backbone():
    # MegActor-Sigma's last 16 of 28 blocks; a 4-block demo backbone has only 4
    assert BlockSelection({"last": 16}).indices(28) == list(range(12, 28))
    assert BlockSelection({"last": 16}).indices(4) == [0, 1, 2, 3]


# Every form the README shows for `injectors.identity.blocks=...`, as typed on the command line.
README_BLOCK_OVERRIDES = [
    ("all", list(range(10))),
    ("odd", [1, 3, 5, 7, 9]),
    ("even", [0, 2, 4, 6, 8]),
    ("{every: 3}", [0, 3, 6, 9]),
    ("{every: 3, offset: 1}", [1, 4, 7]),
    ("{last: 3}", [7, 8, 9]),
    ("[0,5,9]", [0, 5, 9]),
]


@pytest.mark.needs_plugin("idvid_consisid")
@pytest.mark.parametrize("experiment", ["plan_c", "plan_e", "consisid_preview"])
@pytest.mark.parametrize("override, expected", README_BLOCK_OVERRIDES)
def test_every_readme_block_override_composes_with_the_real_configs(experiment, override, expected):
    cfg = compose_config([f"experiment={experiment}", f"injectors.identity.blocks={override}"])
    assert BlockSelection(cfg.injectors.identity.blocks).indices(10) == expected


def test_wrong_channel_count_is_a_clear_error(backbone_config):
    backbone = make_backbone(backbone_config)
    backbone.set_input_channels(16)
    with pytest.raises(ValueError, match="Only a 16-channel model can be widened"):
        backbone.set_input_channels(3)
    latents, timestep, text = backbone_inputs(make_backbone(backbone_config))
    with pytest.raises(ValueError, match="expects 32 input channels but got 16"):
        backbone(latents, timestep, text)


def test_input_site_is_not_accepted_by_token_injectors(backbone_config):
    backbone = make_backbone(backbone_config)
    with pytest.raises(ValueError, match="input-channel injectors"):
        ConstantInjector(backbone.info, Site.INPUT_CONCAT)
    with pytest.raises(ValueError, match="Unknown injection site 'mid'"):
        ConstantInjector(backbone.info, "mid")


def test_plan_refuses_conditions_nobody_produces(backbone_config):
    backbone = make_backbone(backbone_config)
    plan = InjectionPlan({"lin": LinearInjector(backbone.info, Site.ATTN_FFN)})
    with pytest.raises(ValueError, match=r"'signal', needed by injector\(s\) lin"):
        plan.check_conditions({"face_latent": "reference"})
    plan.check_conditions({"signal": "somebody"})


def test_pretrained_folder_loads_and_widening_keeps_its_output(backbone_config, tmp_path):
    source = make_backbone(backbone_config)
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(source, name).save_pretrained(tmp_path / name)
    loaded = CogVideoXBackbone(pretrained=str(tmp_path)).eval()
    inputs = backbone_inputs(loaded)
    expected = run_backbone(source, inputs=inputs)
    torch.testing.assert_close(run_backbone(loaded, inputs=inputs), expected, rtol=0, atol=0)
    assert loaded.encode_text(["a person smiling"]).shape == (1, 16, 32)
    loaded.set_input_channels(16)
    latents, timestep, text = inputs
    widened = run_backbone(loaded, inputs=(torch.cat([latents, torch.randn_like(latents)], 2), timestep, text))
    torch.testing.assert_close(widened, expected, rtol=0, atol=0)


def test_missing_pretrained_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*transformer/, vae/, text_encoder/"):
        CogVideoXBackbone(pretrained=str(missing))
    (tmp_path / "partial" / "transformer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="transformer has no config.json"):
        CogVideoXBackbone(pretrained=str(tmp_path / "partial"))
