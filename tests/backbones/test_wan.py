"""The Wan adapter against diffusers: forward, sampling, two experts, LoRA, export, and its errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from omegaconf import OmegaConf

from idvid.backbones.lora import LORA_WEIGHTS_FILE, add_lora, without_lora
from idvid.backbones.wan import NUM_TRAIN_TIMESTEPS, WanBackbone, _scheduler_from
from idvid.injection.plan import InjectionPlan
from idvid.randomness import BatchRandom
from idvid.sampling.sampler import sample_latents

from ..conftest import compose_config
from ..core.test_training import build_model, demo_batch  # noqa: F401  (demo_batch: a fixture)


def wan_config(*overrides: str) -> dict:
    config = OmegaConf.to_container(compose_config(["backbone=wan_tiny", *overrides]).backbone, resolve=True)
    config.pop("name")
    return config


def make_wan(*overrides: str, **arguments) -> WanBackbone:
    torch.manual_seed(0)
    return WanBackbone(**{**wan_config(*overrides), **arguments}).eval()


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter off its initial value, so zero-initialised parts (gates, biases) hide nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def inputs(backbone: WanBackbone, batch: int = 2, frames: int = 3, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, frames, backbone.transformer.config.in_channels, size, size, generator=generator)
    text = torch.randn(batch, backbone.max_text_length, backbone.info.text_hidden_size, generator=generator)
    return latents, torch.tensor([120.0, 870.0][:batch]), text


def diffusers_forward(transformer, latents, timestep, text) -> torch.Tensor:
    output = transformer(latents.permute(0, 2, 1, 3, 4), timestep, text, return_dict=False)[0]
    return output.permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def wan() -> WanBackbone:
    backbone = make_wan()
    perturb(backbone.transformer)
    return backbone


@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_equals_diffusers_wan_transformer(wan, checkpointing):
    latents, timestep, text = inputs(wan)
    reference = copy.deepcopy(wan.transformer)
    if checkpointing:
        reference.enable_gradient_checkpointing()
    wan.gradient_checkpointing = checkpointing
    try:
        latents.requires_grad_(True)
        ours = wan(latents, timestep, text)
        (ours_grad,) = torch.autograd.grad(ours.square().sum(), latents)
        theirs = diffusers_forward(reference, latents, timestep, text)
        (theirs_grad,) = torch.autograd.grad(theirs.square().sum(), latents)
    finally:
        wan.gradient_checkpointing = False
    assert ours.shape == (2, 3, 16, 8, 8)
    assert theirs.abs().max() > 0.1
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours_grad - theirs_grad).abs().max() <= 1e-5 * theirs_grad.abs().max()


@pytest.mark.parametrize("scheduler", ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_kit_sampling_equals_wan_pipeline(wan, scheduler):
    if scheduler != type(wan.scheduler).__name__:
        wan = copy.copy(wan)  # the same modules, another scheduler (built as backbone.scheduler.class_name does)
        wan.scheduler = _scheduler_from(None, {"class_name": scheduler, "flow_shift": 3.0})
    num_frames, height, width, steps, guidance = 5, 32, 32, 4, 5.0
    caption = "a man smiling at the camera"
    shape = wan.latent_shape(1, num_frames, height, width)
    with torch.no_grad():
        kit = sample_latents(
            wan,
            InjectionPlan({}),
            {},
            wan.encode_text([caption]),
            wan.encode_text([""]),
            shape,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(7),
        )
        kit_frames = (wan.decode_latents(kit) + 1) / 2
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))  # what the kit's sampler drew
    pipe = WanPipeline(
        tokenizer=wan.tokenizer,
        text_encoder=wan.text_encoder,
        vae=wan.vae,
        scheduler=copy.deepcopy(wan.scheduler),
        transformer=wan.transformer,
    )
    frames = pipe(
        prompt=caption,
        negative_prompt="",
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise.permute(0, 2, 1, 3, 4),
        output_type="pt",
        max_sequence_length=wan.max_text_length,
    ).frames
    assert frames.shape == kit_frames.shape == (1, num_frames, 3, height, width)
    assert frames.std() > 0.01
    assert (frames - kit_frames).abs().max() <= 1e-5


def test_flow_matching_objective_is_wans():
    backbone = make_wan()
    clean = torch.randn(4096, 1, 16, 1, 1)
    noised = backbone.add_training_noise(clean, BatchRandom(torch.Generator().manual_seed(0)))
    sigma = (noised.timesteps / NUM_TRAIN_TIMESTEPS).view(-1, 1, 1, 1, 1)
    noise = noised.target + clean  # the target is the velocity noise - x0
    torch.testing.assert_close(noised.noisy, (1 - sigma) * clean + sigma * noise)
    torch.testing.assert_close(noised.weight, torch.ones(4096))
    assert backbone.to_target_space(noised.target, noised) is noised.target
    # shift 3: u ~ U(0, 1) becomes sigma = 3u / (1 + 2u), median 3/4 instead of 1/2
    assert abs(sigma.median().item() - 0.75) < 0.02
    fixed = backbone.add_training_noise(clean[:3], BatchRandom(torch.Generator().manual_seed(0)), t_fraction=0.25)
    torch.testing.assert_close(fixed.timesteps, torch.full((3,), 250.0))


# ------------------------------------------------------------------ Wan 2.2 two experts
TWO_EXPERTS = ("backbone.boundary_ratio=0.5",)


def spy_on_experts(backbone: WanBackbone) -> list[tuple[str, list[float]]]:
    calls: list[tuple[str, list[float]]] = []
    names = {id(backbone.transformer): backbone.expert, id(backbone.other_expert): "other"}
    for expert in (backbone.transformer, backbone.other_expert):
        expert.condition_embedder.register_forward_hook(
            lambda module, args, output, model=expert: calls.append((names[id(model)], args[0].tolist()))
        )
    return calls


@pytest.mark.parametrize("expert", ["high_noise", "low_noise"])
def test_each_expert_trains_only_on_its_timestep_range(expert):
    backbone = make_wan(*TWO_EXPERTS, f"backbone.expert={expert}")
    calls = spy_on_experts(backbone)
    random = BatchRandom(torch.Generator().manual_seed(0))
    latents, _, text = inputs(backbone)
    timesteps = []
    for _ in range(20):
        noised = backbone.add_training_noise(latents, random)
        backbone(noised.noisy, noised.timesteps, text)
        timesteps += noised.timesteps.tolist()
    boundary = 0.5 * NUM_TRAIN_TIMESTEPS
    inside = [t >= boundary for t in timesteps] if expert == "high_noise" else [t < boundary for t in timesteps]
    assert all(inside) and max(timesteps) - min(timesteps) > 200
    assert {name for name, _ in calls} == {expert}  # the frozen expert never ran in training
    # the trained expert is `transformer` (LoRA, widening, export); the other is frozen
    assert all(p.requires_grad is False for p in backbone.other_expert.parameters())
    assert "other_expert" in backbone.frozen_modules
    edge = backbone.add_training_noise(latents, random, t_fraction=1.0 if expert == "low_noise" else 0.0)
    assert bool(backbone.expert_of(edge.timesteps).all())  # even the range's edge stays with this expert


def test_sampling_switches_experts_at_the_boundary():
    backbone = make_wan(*TWO_EXPERTS, "backbone.expert=high_noise")
    calls = spy_on_experts(backbone)
    latents, _, text = inputs(backbone, batch=1)
    schedule = backbone.sampling_schedule(8, "cpu")
    with torch.no_grad():
        sample_latents(
            backbone, InjectionPlan({}), {}, text, text * 0, latents.shape, num_inference_steps=8, guidance_scale=2.0
        )
    expected = ["high_noise" if t >= 500 else "other" for t in schedule.timesteps.tolist()]
    assert [name for name, _ in calls] == expected
    assert "high_noise" in expected and "other" in expected
    assert all(len(set(steps)) == 1 for _, steps in calls)  # CFG's two branches share one timestep


def test_two_expert_folder_loads_with_the_low_noise_expert_training(tmp_path):
    built = make_wan(*TWO_EXPERTS, "backbone.expert=high_noise")
    pipe = WanPipeline(
        tokenizer=built.tokenizer,
        text_encoder=built.text_encoder,
        vae=built.vae,
        scheduler=built.scheduler,
        transformer=built.transformer,
        transformer_2=built.other_expert,
        boundary_ratio=0.5,
    )
    pipe.save_pretrained(tmp_path)
    loaded = WanBackbone(pretrained=str(tmp_path), expert="low_noise").eval()
    assert loaded.boundary_ratio == 0.5
    latents, _, text = inputs(loaded, batch=1)
    low = torch.tensor([100.0])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(latents, low, text), diffusers_forward(built.other_expert, latents, low, text)
        )
    with pytest.raises(ValueError, match="backbone.expert=high_noise or backbone.expert=low_noise"):
        WanBackbone(pretrained=str(tmp_path))


def test_widening_a_two_expert_model_widens_the_frozen_expert_too():
    """input_concat on a two-expert model: sampling's other-expert steps read the widened input as well."""
    backbone = make_wan(*TWO_EXPERTS, "backbone.expert=high_noise")
    latents, _, text = inputs(backbone, batch=1)
    low = torch.tensor([100.0])  # the frozen low-noise expert's range
    with torch.no_grad():
        before = backbone(latents, low, text)
        backbone.set_input_channels(16)
        widened = torch.cat([latents, torch.randn_like(latents)], dim=2)
        torch.testing.assert_close(backbone(widened, low, text), before, rtol=0, atol=0)
    assert backbone.other_expert.config.in_channels == backbone.transformer.config.in_channels == 32


# ------------------------------------------------------------------ Wan 2.2: both experts train
BOTH = (*TWO_EXPERTS, "backbone.expert=both")


def spy_on_pair(backbone: WanBackbone) -> list[tuple[str, list[float]]]:
    calls: list[tuple[str, list[float]]] = []
    for name in ("high_noise", "low_noise"):
        getattr(backbone.transformer, name).condition_embedder.register_forward_hook(
            lambda module, args, output, name=name: calls.append((name, args[0].tolist()))
        )
    return calls


def test_both_experts_train_each_only_on_its_timestep_range():
    backbone = make_wan(*BOTH).train()
    calls = spy_on_pair(backbone)
    random = BatchRandom(torch.Generator().manual_seed(0))
    latents, _, text = inputs(backbone)
    for _ in range(40):
        noised = backbone.add_training_noise(latents, random)
        backbone.zero_grad()
        backbone(noised.noisy, noised.timesteps, text).square().mean().backward()
        ran = calls[-1][0]
        # Only the expert of this step's timesteps gets gradients.
        for name in ("high_noise", "low_noise"):
            grads = [p.grad for p in getattr(backbone.transformer, name).parameters() if p.grad is not None]
            assert bool(grads) == (name == ran)
    boundary = 0.5 * NUM_TRAIN_TIMESTEPS
    seen = {name: [t for n, steps in calls for t in steps if n == name] for name in ("high_noise", "low_noise")}
    assert seen["high_noise"] and seen["low_noise"]  # both experts trained
    assert min(seen["high_noise"]) >= boundary and max(seen["low_noise"]) < boundary
    # Every sample's noise level is distributed as in one-model training (shift 3: P(sigma >= 0.5) = 3/4).
    high_share = len(seen["high_noise"]) / (len(seen["high_noise"]) + len(seen["low_noise"]))
    assert 0.5 < high_share < 0.95
    # Both experts' weights are trained parameters of `transformer`; nothing is a frozen expert.
    assert backbone.other_expert is None and "other_expert" not in backbone.frozen_modules
    assert all(p.requires_grad for p in backbone.transformer.parameters())
    assert {n.split(".")[0] for n, _ in backbone.transformer.named_parameters()} == {"high_noise", "low_noise"}


def test_both_experts_fixed_fraction_goes_to_the_expert_of_that_noise_level():
    backbone = make_wan(*BOTH)
    latents = torch.zeros(2, 3, 16, 8, 8)
    for fraction, expert_is_high in ((0.25, False), (0.5, True), (0.9, True)):
        noised = backbone.add_training_noise(latents, BatchRandom(torch.Generator().manual_seed(0)), fraction)
        torch.testing.assert_close(noised.timesteps, torch.full((2,), fraction * NUM_TRAIN_TIMESTEPS))
        assert bool((noised.timesteps >= 500).all()) == expert_is_high


def test_both_experts_sample_switching_at_the_boundary_and_lora_and_export_cover_both(tmp_path):
    backbone = make_wan(*BOTH)
    calls = spy_on_pair(backbone)
    latents, _, text = inputs(backbone, batch=1)
    schedule = backbone.sampling_schedule(8, "cpu")
    with torch.no_grad():
        sample_latents(backbone, InjectionPlan({}), {}, text, text * 0, latents.shape, num_inference_steps=8)
    expected = ["high_noise" if t >= 500 else "low_noise" for t in schedule.timesteps.tolist()]
    assert [name for name, _ in calls] == expected and len(set(expected)) == 2

    add_lora(backbone.transformer, targets=backbone.lora_targets, rank=2)
    perturb(backbone.transformer)
    path = backbone.save_lora(tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_WEIGHTS_FILE
    assert (tmp_path / "lora" / "low_noise" / LORA_WEIGHTS_FILE).is_file()
    base = without_lora(backbone.transformer, merge=False)
    base.save_pretrained(tmp_path / "export" / "transformer")
    with torch.no_grad():
        experts = (("transformer", tmp_path / "lora", 900.0), ("transformer_2", tmp_path / "lora" / "low_noise", 100.0))
        for folder, lora_folder, t in experts:  # high noise, then low noise
            reread = WanTransformer3DModel.from_pretrained(tmp_path / "export" / folder)
            reread.load_lora_adapter(str(lora_folder), prefix="transformer", weight_name=LORA_WEIGHTS_FILE)
            timestep = torch.tensor([t])
            torch.testing.assert_close(
                diffusers_forward(reread, latents, timestep, text), backbone(latents, timestep, text), rtol=0, atol=1e-5
            )


# ------------------------------------------------------------------------------ LoRA, export
def test_lora_export_loads_in_wan_pipeline_and_reproduces_the_output(tmp_path):
    backbone = make_wan()
    add_lora(backbone.transformer, targets=backbone.lora_targets, rank=4, alpha=8)
    perturb(backbone.transformer)  # LoRA B included: the adapter changes the output
    path = backbone.save_lora(tmp_path)
    assert path == tmp_path / LORA_WEIGHTS_FILE and path.is_file()
    latents, timestep, text = inputs(backbone)
    with torch.no_grad():
        expected = backbone(latents, timestep, text)
        base = without_lora(backbone.transformer, merge=False)
        assert (diffusers_forward(base, latents, timestep, text) - expected).abs().max() > 1e-3

        adapter = copy.deepcopy(base)
        adapter.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=LORA_WEIGHTS_FILE)
        torch.testing.assert_close(diffusers_forward(adapter, latents, timestep, text), expected, rtol=0, atol=1e-5)

        pipe = WanPipeline(backbone.tokenizer, backbone.text_encoder, backbone.vae, backbone.scheduler, base)
        pipe.load_lora_weights(str(tmp_path))
        torch.testing.assert_close(
            diffusers_forward(pipe.transformer, latents, timestep, text), expected, rtol=0, atol=1e-5
        )


def test_pretrained_folder_round_trip_and_widening_keeps_the_output(wan, tmp_path):
    WanPipeline(wan.tokenizer, wan.text_encoder, wan.vae, wan.scheduler, wan.transformer).save_pretrained(tmp_path)
    loaded = WanBackbone(pretrained=str(tmp_path)).eval()
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler" and loaded.flow_shift == 3.0
    latents, timestep, text = inputs(loaded)
    with torch.no_grad():
        before = loaded(latents, timestep, text)
        torch.testing.assert_close(before, wan(latents, timestep, text), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_text(["a man"]), wan.encode_text(["a man"]), rtol=0, atol=0)
        loaded.set_input_channels(16)
        widened = torch.cat([latents, torch.randn_like(latents)], dim=2)
        torch.testing.assert_close(loaded(widened, timestep, text), before, rtol=0, atol=0)
    # export --to idvid writes transformer/ with save_pretrained: diffusers reads the widened model back
    loaded.transformer.save_pretrained(tmp_path / "export")
    reread = WanTransformer3DModel.from_pretrained(tmp_path / "export")
    assert reread.config.in_channels == 32


@pytest.mark.needs_plugin("idvid_consisid")
def test_export_to_idvid_transformer_loads_in_diffusers(tmp_path):
    import hydra
    import lightning as L

    from idvid.interop import KitFormat

    L.seed_everything(0)
    module = hydra.utils.instantiate(compose_config(["experiment=plan_c", "backbone=wan_tiny"]).model)
    perturb(module.backbone.transformer)
    KitFormat().write(module, tmp_path)
    reread = WanTransformer3DModel.from_pretrained(tmp_path / "transformer")
    latents, timestep, text = inputs(module.backbone)
    with torch.no_grad():
        torch.testing.assert_close(
            diffusers_forward(reread, latents, timestep, text),
            module.backbone(latents, timestep, text),
            rtol=0,
            atol=1e-6,
        )


# ---------------------------------------------------------------------------------- bad input
def _folder(tmp_path, pipeline: str, transformer: str, **transformer_config) -> str:
    (tmp_path / "transformer").mkdir(parents=True)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": transformer, **transformer_config})
    )
    return str(tmp_path)


def test_a_cogvideox_folder_is_refused_with_the_backbone_to_use(tmp_path):
    with pytest.raises(ValueError, match="not a Wan pipeline; use backbone=cogvideox"):
        WanBackbone(pretrained=_folder(tmp_path, "CogVideoXPipeline", "CogVideoXTransformer3DModel"))


def test_a_folder_of_something_else_is_refused(tmp_path):
    with pytest.raises(ValueError, match="names 'FluxTransformer2DModel'.*expected 'WanTransformer3DModel'"):
        WanBackbone(pretrained=_folder(tmp_path, "FluxPipeline", "FluxTransformer2DModel"))


def test_an_i2v_folder_is_refused_naming_why(tmp_path):
    folder = _folder(tmp_path, "WanImageToVideoPipeline", "WanTransformer3DModel", in_channels=36, image_dim=1280)
    (tmp_path / "image_encoder").mkdir()
    with pytest.raises(ValueError, match="image-to-video.*in_channels=36.*Use a Wan T2V folder"):
        WanBackbone(pretrained=folder)


def test_a_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        WanBackbone(pretrained=str(tmp_path / "nowhere"))


def test_mismatched_transformer_and_vae_channels_are_refused():
    with pytest.raises(ValueError, match="z_dim=16"):
        make_wan("backbone.transformer.out_channels=8")


def test_an_expert_on_a_one_expert_model_is_refused():
    with pytest.raises(ValueError, match="backbone.expert='high_noise'.*one transformer"):
        make_wan("backbone.expert=high_noise")


def test_frame_counts_the_vae_cannot_take_are_refused_with_the_nearest_valid_ones(wan):
    with pytest.raises(ValueError, match="data.num_frames=5 or 9"):
        wan.encode_video(torch.zeros(1, 8, 3, 32, 32))
    with pytest.raises(
        ValueError, match=r"10 frames of 40x32.*nearest: 9 or 13.*height must be a multiple of 16 \(nearest: 32 or 48\)"
    ):
        wan.latent_shape(1, 10, 40, 32)
    assert wan.latent_shape(2, 9, 32, 48) == (2, 3, 16, 4, 6)


@pytest.mark.needs_plugin("idvid_consisid")
def test_both_experts_under_the_training_module_lora_and_kit_export(tmp_path, demo_batch):  # noqa: F811
    """plan_c with expert=both and trainable=lora: both experts widened and adapted, export writes the pair."""
    from idvid.interop import KitFormat

    module, _ = build_model("plan_c", "backbone=wan_tiny", *BOTH, "model.trainable=lora")
    pair = module.backbone.transformer
    assert [expert.config.in_channels for expert in pair.experts] == [32, 32]
    for expert in pair.experts:  # the LoRA adapters and the widened input layer train, the base does not
        trained = {n for n, p in expert.named_parameters() if p.requires_grad}
        assert trained and all("lora_" in n or n.startswith("patch_embedding.") for n in trained)
    module.train()
    loss = module.compute_loss(demo_batch, BatchRandom(torch.Generator().manual_seed(0)))["loss"]
    loss.backward()
    with_grads = {n.split(".")[0] for n, p in pair.named_parameters() if p.grad is not None}
    assert len(with_grads) == 1  # the step's expert only
    KitFormat().write(module, tmp_path)
    for folder in ("transformer", "transformer_2"):
        assert WanTransformer3DModel.from_pretrained(tmp_path / folder).config.in_channels == 32
    assert (tmp_path / "transformer_lora" / "low_noise" / LORA_WEIGHTS_FILE).is_file()
