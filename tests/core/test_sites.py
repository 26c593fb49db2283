"""The site contract on the CogVideoX adapter: where each site acts, block selection, equivalence."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from idvid.backbones.cogvideox import CogVideoXBackbone
from idvid.injection import BlockSelection, InjectionPlan, Site

from ..conftest import compose_config
from .helpers import ConstantInjector, ExtraChannels, LinearInjector, backbone_inputs, make_backbone

IN_BLOCK_SITES = [Site.PRE_ATTN, Site.ATTN_FFN, Site.POST_ATTN]


def run(backbone, plan=None, conditions=None, inputs=None):
    latents, timestep, text = inputs or backbone_inputs(backbone)
    injection = (plan or InjectionPlan({})).prepare(conditions or {})
    return backbone(latents, timestep, text, injection)


def test_adapter_matches_diffusers_forward(backbone_config):
    backbone = make_backbone(backbone_config)
    latents, timestep, text = backbone_inputs(backbone)
    rotary = backbone.rotary_embedding(*latents.shape[1:2], *latents.shape[3:], latents.device)
    reference = CogVideoXTransformer3DModel.forward(
        backbone.transformer, latents, text, timestep, image_rotary_emb=rotary, return_dict=False
    )[0]
    ours = run(backbone, inputs=(latents, timestep, text))
    assert ours.shape == reference.shape == (2, 3, 16, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("site", IN_BLOCK_SITES)
def test_zero_injector_is_a_no_op_at_every_site(backbone_config, site):
    backbone = make_backbone(backbone_config)
    plan = InjectionPlan({"zero": ConstantInjector(backbone.info, site, value=0.0)})
    torch.testing.assert_close(run(backbone, plan), run(backbone), rtol=0, atol=0)
    assert plan.injectors["zero"].calls == list(range(backbone.info.num_layers))


def test_zero_input_concat_channels_leave_output_unchanged(backbone_config):
    backbone = make_backbone(backbone_config)
    inputs = backbone_inputs(backbone)
    before = run(backbone, inputs=inputs)
    backbone.set_input_channels(16)
    latents, timestep, text = inputs
    # Any content in the new channels: the widened weights start at zero, so nothing changes at step 0.
    widened = torch.cat([latents, torch.randn_like(latents)], dim=2)
    after = run(backbone, inputs=(widened, timestep, text))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert backbone.transformer.config.in_channels == 32


def _spy_inputs(backbone, block_index):
    """Record the inputs of norm1 and ff of one block and of the next block's norm1."""
    seen: dict[str, torch.Tensor] = {}
    blocks = backbone.transformer.transformer_blocks
    hooks = [
        blocks[block_index].norm1.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm1", a[0].clone())),
        blocks[block_index].ff.register_forward_pre_hook(lambda m, a: seen.__setitem__("ff", a[0].clone())),
        blocks[block_index + 1].norm1.register_forward_pre_hook(lambda m, a: seen.__setitem__("next", a[0].clone())),
    ]
    return seen, hooks


@pytest.mark.parametrize(
    "site, changes",
    [
        # pre_attn: the block's own input (seen by norm1) already carries the residual.
        (Site.PRE_ATTN, {"norm1": True, "ff": True, "next": True}),
        # attn_ffn: attention saw the clean stream, the FFN sees the injected one.
        (Site.ATTN_FFN, {"norm1": False, "ff": True, "next": True}),
        # post_attn: the whole block ran clean; only what follows sees it.
        (Site.POST_ATTN, {"norm1": False, "ff": False, "next": True}),
    ],
)
def test_each_site_acts_where_it_claims(backbone_config, site, changes):
    backbone = make_backbone(backbone_config)
    block = 1
    clean, hooks = _spy_inputs(backbone, block)
    run(backbone)
    for hook in hooks:
        hook.remove()
    plan = InjectionPlan({"c": ConstantInjector(backbone.info, site, blocks=[block], value=0.5)})
    injected, hooks = _spy_inputs(backbone, block)
    run(backbone, plan)
    for hook in hooks:
        hook.remove()
    text_length = backbone.transformer.config.max_text_seq_length
    for name, should_change in changes.items():
        before, after = clean[name], injected[name]
        if name == "ff":  # the FFN input is cat(text, video): look at the video part
            before, after = before[:, text_length:], after[:, text_length:]
        assert (not torch.equal(before, after)) == should_change, f"{site.value}: {name} changed={not should_change}"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [0, 1, 2, 3]),
        ("odd", [1, 3]),
        ("even", [0, 2]),
        ({"every": 2}, [0, 2]),
        ({"every": 3, "offset": 1}, [1]),
        ([3, 0], [0, 3]),
    ],
)
def test_block_selection_hits_exactly_the_configured_blocks(backbone_config, spec, expected):
    backbone = make_backbone(backbone_config)
    injectors = {site.value: ConstantInjector(backbone.info, site, blocks=spec) for site in IN_BLOCK_SITES}
    run(backbone, InjectionPlan(injectors))
    for injector in injectors.values():
        assert injector.calls == expected
    assert BlockSelection(spec).indices(4) == expected


@pytest.mark.parametrize(
    "spec, message", [([4], "out of range"), ("some", "Unknown block selection"), ([1, 1], "repeats")]
)
def test_bad_block_selection_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        BlockSelection(spec).indices(4)


# Every form the README shows for `injectors.identity.blocks=...`, as typed on the command line.
README_BLOCK_OVERRIDES = [
    ("all", list(range(10))),
    ("odd", [1, 3, 5, 7, 9]),
    ("even", [0, 2, 4, 6, 8]),
    ("{every: 3}", [0, 3, 6, 9]),
    ("{every: 3, offset: 1}", [1, 4, 7]),
    ("[0,5,9]", [0, 5, 9]),
]


@pytest.mark.parametrize("experiment", ["plan_c", "plan_e", "consisid_preview"])
@pytest.mark.parametrize("override, expected", README_BLOCK_OVERRIDES)
def test_every_readme_block_override_composes_with_the_real_configs(experiment, override, expected):
    cfg = compose_config([f"experiment={experiment}", f"injectors.identity.blocks={override}"])
    assert BlockSelection(cfg.injectors.identity.blocks).indices(10) == expected


def test_gradient_checkpointing_gives_identical_outputs_and_gradients(backbone_config):
    results = []
    for checkpointing in (False, True):
        backbone = make_backbone(backbone_config, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(3)
        plan = InjectionPlan({s.value: LinearInjector(backbone.info, s, blocks="odd") for s in IN_BLOCK_SITES})
        signal = torch.tensor([1.0, 0.5], requires_grad=True)
        output = run(backbone, plan, {"signal": signal})
        output.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in plan.named_parameters()}
        results.append((output.detach(), grads, signal.grad.clone()))
    (out_a, grads_a, sig_a), (out_b, grads_b, sig_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(sig_a, sig_b, rtol=1e-5, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 6
    for name in grads_a:
        assert grads_a[name].abs().sum() > 0
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7)


def test_two_input_concat_injectors_add_up_their_channels(backbone_config):
    backbone = make_backbone(backbone_config)
    plan = InjectionPlan({"a": ExtraChannels(backbone.info, 16), "b": ExtraChannels(backbone.info, 3)})
    assert plan.extra_input_channels == 19
    backbone.set_input_channels(plan.extra_input_channels)
    latents, timestep, text = backbone_inputs(make_backbone(backbone_config))
    extra = plan.concat_latents({"extra": torch.randn(2, 1, 16, 1, 1)}, latents)
    assert extra.shape == (2, 3, 19, 8, 8)
    output = backbone(torch.cat([latents, extra], dim=2), timestep, text)
    assert output.shape == latents.shape


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
    expected = run(source, inputs=inputs)
    torch.testing.assert_close(run(loaded, inputs=inputs), expected, rtol=0, atol=0)
    assert loaded.encode_text(["a person smiling"]).shape == (1, 16, 32)
    loaded.set_input_channels(16)
    latents, timestep, text = inputs
    widened = run(loaded, inputs=(torch.cat([latents, torch.randn_like(latents)], 2), timestep, text))
    torch.testing.assert_close(widened, expected, rtol=0, atol=0)


def test_missing_pretrained_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*transformer/, vae/, text_encoder/"):
        CogVideoXBackbone(pretrained=str(missing))
    (tmp_path / "partial" / "transformer").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="transformer has no config.json"):
        CogVideoXBackbone(pretrained=str(tmp_path / "partial"))
