"""The core `reference_pass` conditioner: the backbone's own per-block features of the reference."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from omegaconf import OmegaConf

from idvid.conditioning.reference_pass import ReferencePass
from idvid.errors import ConfigError
from idvid.randomness import BatchRandom
from idvid.registry import PluginKind, build
from idvid.training.module import IdentityVideoModule

from ..backbones.test_backbone_contract import TINY_BACKBONES
from ..conftest import compose_config
from .helpers import TINY_INFO  # the demo's sizes: 4 blocks


@functools.lru_cache(maxsize=None)
def _backbone_node(config: str) -> dict:
    return OmegaConf.to_container(compose_config([f"backbone={config}"]).backbone, resolve=True)


@pytest.fixture(scope="module", params=TINY_BACKBONES, ids=str)
def tiny(request):
    node = dict(_backbone_node(request.param.config))
    torch.manual_seed(0)
    options = {k: v for k, v in node.items() if k != "name"}
    return request.param, node, build(PluginKind.BACKBONE, node["name"], **options).eval()


def _reference_images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.mark.parametrize("site", ["pre_attn", "post_attn"])
def test_reference_pass_returns_the_hidden_states_of_the_chosen_blocks(tiny, site):
    spec, _, backbone = tiny
    blocks = getattr(backbone.transformer, spec.blocks)
    chosen = [0, 2]
    conditioner = ReferencePass(backbone.info, blocks=chosen, site=site)
    images = _reference_images()
    with torch.enable_grad():  # frozen: no graph even where gradients are on
        features = conditioner({"ref_image": images}, backbone, BatchRandom(torch.Generator().manual_seed(0)))
    features = features["reference_features"]

    # A manual forward of the same reference with a spy on each block's first norm: the input of block i
    # is its pre_attn tokens, and the output of block i (post_attn) is the input of block i + 1.
    seen = {}
    hooks = [
        block.norm1.register_forward_pre_hook(lambda _, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            latents = backbone.encode_video(images.unsqueeze(1), BatchRandom(torch.Generator().manual_seed(0)))
            backbone(latents, torch.zeros(2), backbone.encode_text(["", ""]))
    finally:
        for hook in hooks:
            hook.remove()

    assert sorted(features) == chosen
    patch = backbone.info.patch_size
    tokens = latents.shape[-2] * latents.shape[-1] // patch**2  # one latent frame
    for block in chosen:
        expected = seen[block] if site == "pre_attn" else seen[block + 1]
        assert features[block].shape == (2, tokens, backbone.info.hidden_size)
        assert not features[block].requires_grad
        torch.testing.assert_close(features[block].float(), expected.float(), rtol=0, atol=0)


def test_reference_pass_text_options_change_the_features(tiny):
    _, _, backbone = tiny
    batch = {"ref_image": _reference_images(1), "caption": ["a person walks"]}

    def features(**options):
        conditioner = ReferencePass(backbone.info, blocks=[1], **options)
        out = conditioner(batch, backbone, BatchRandom(torch.Generator().manual_seed(0)))
        return out["reference_features"][1]

    empty = features()
    assert ReferencePass(backbone.info, text="caption").reads == ("ref_image", "caption")
    assert not torch.equal(empty, features(text="caption"))
    assert torch.equal(features(text="caption"), features(text="prompt", prompt="a person walks"))
    assert not torch.equal(empty, features(timestep=500))


def test_a_widened_backbone_reads_the_reference_with_zero_extra_channels(tiny):
    _, _, backbone = tiny
    widened = copy.deepcopy(backbone)
    widened.set_input_channels(4)  # an input_concat plan's channels: the reference has none of them
    with torch.no_grad():
        widened.input_layer.weight[:, backbone.info.latent_channels :].normal_()  # as if they had trained
    conditioner = ReferencePass(backbone.info, blocks=[3])
    batch = {"ref_image": _reference_images(1)}
    plain, wide = (
        conditioner(batch, model, BatchRandom(torch.Generator().manual_seed(0)))["reference_features"][3]
        for model in (backbone, widened)
    )
    assert torch.equal(plain, wide)


def test_reference_pass_runs_once_per_video_when_sampling(tiny, monkeypatch):
    _, node, _ = tiny
    torch.manual_seed(0)
    module = IdentityVideoModule(
        backbone=node,
        conditioners={"reference_pass": {"name": "reference_pass", "blocks": "odd"}},
    ).eval()
    backbone, calls = module.backbone, []
    forward = backbone.forward

    def counting_forward(latents, *args, **kwargs):
        calls.append("reference" if latents.shape[1] == 1 else "denoise")  # the video has 3 latent frames
        return forward(latents, *args, **kwargs)

    monkeypatch.setattr(backbone, "forward", counting_forward)
    batch = {"ref_image": _reference_images(1), "caption": ["a person walks"]}
    video = module.generate(batch, 9, 64, 64, num_inference_steps=3, guidance_scale=6.0)  # CFG: both branches
    assert video.shape == (1, 9, 3, 64, 64)
    assert calls == ["reference", "denoise", "denoise", "denoise"]


def test_bad_reference_pass_configs_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"(?s)blocks=\[1, 7\].*out of range.*among 0\.\.3"):
        ReferencePass(TINY_INFO, blocks=[1, 7])
    with pytest.raises(ConfigError, match=r"(?s)blocks='middle'.*Unknown block selection"):
        ReferencePass(TINY_INFO, blocks="middle")
    with pytest.raises(ConfigError, match=r"(?s)site='input_concat'.*pre_attn, attn_ffn or post_attn"):
        ReferencePass(TINY_INFO, site="input_concat")
    with pytest.raises(ConfigError, match=r"(?s)site='after_ffn'.*Unknown injection site"):
        ReferencePass(TINY_INFO, site="after_ffn")
    with pytest.raises(ConfigError, match=r"(?s)text='image'.*text=prompt with prompt="):
        ReferencePass(TINY_INFO, text="image")
    with pytest.raises(RuntimeError, match=r"call attach\(backbone\) first"):
        ReferencePass(TINY_INFO, trainable=True)({"ref_image": _reference_images(1)}, None, None)


def test_a_trainable_reference_pass_runs_its_own_copy_of_the_transformer_in_the_graph(tiny):
    _, _, backbone = tiny
    backbone = copy.deepcopy(backbone)
    frozen, trainable = (
        ReferencePass(backbone.info, blocks=[2, 3]),
        ReferencePass(backbone.info, blocks=[2, 3], trainable=True),
    )
    trainable.attach(backbone)
    batch = {"ref_image": _reference_images()}

    def features(conditioner):
        return conditioner(batch, backbone, BatchRandom(torch.Generator().manual_seed(0)))["reference_features"]

    with torch.enable_grad():
        copied, own = features(trainable), features(frozen)
    # A copy as built: the same features as the backbone's own pass, but with a graph to the copy's weights only.
    for block in (2, 3):
        torch.testing.assert_close(copied[block], own[block], rtol=0, atol=0)
        assert copied[block].requires_grad and not own[block].requires_grad
    assert backbone.transformer is not trainable.transformer  # the backbone's own is back in place
    sum(f.square().mean() for f in copied.values()).backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.transformer.parameters())
    with torch.no_grad():  # sampling: no graph
        assert not features(trainable)[2].requires_grad


@pytest.mark.parametrize("reference_trainable", [False, True])
def test_a_trainable_reference_pass_trains_with_the_plan_and_is_saved(tiny, reference_trainable):
    _, node, _ = tiny
    module = IdentityVideoModule(
        backbone=node,
        conditioners={"reference": {"name": "reference_pass", "blocks": {"last": 2}, "trainable": reference_trainable}},
        trainable="injectors" if reference_trainable else "all",
    )
    reference = module.conditioners["reference"]
    conditioner_parameters = [n for n, _ in module.named_parameters() if n.startswith("conditioners.")]
    if not reference_trainable:  # frozen: the backbone's own transformer, nothing of its own
        assert reference.transformer is None and conditioner_parameters == []
        return
    # model.trainable=injectors: the base is frozen, the reference network trains (and is in the checkpoint)
    assert conditioner_parameters and all(p.requires_grad for p in reference.parameters())
    assert not any(p.requires_grad for p in module.backbone.parameters())
    assert {f"conditioners.reference.transformer.{n}" for n, _ in reference.transformer.named_parameters()} <= set(
        module.state_dict()
    )
