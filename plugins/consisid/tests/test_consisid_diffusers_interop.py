"""consisid_preview *is* ConsisID: convert diffusers' model in, match it numerically, export it back."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDPMScheduler,
    CogVideoXTransformer3DModel,
    ConsisIDPipeline,
    ConsisIDTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from idvid_consisid.compat import ConsisIDCompatTransformer
from idvid_consisid.tiny import write_tiny_pipeline
from transformers import AutoTokenizer, T5EncoderModel

from idvid.interop import load_module
from idvid.randomness import BatchRandom
from idvid.verbs.convert import convert, export

BASE = dict(
    num_attention_heads=3,
    attention_head_dim=16,
    in_channels=32,
    out_channels=16,
    time_embed_dim=16,
    text_embed_dim=16,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    max_text_seq_length=8,
    is_train_face=True,
    cross_attn_dim_head=8,
    cross_attn_num_heads=2,
    LFE_id_dim=10,
    LFE_vit_dim=8,
    LFE_dim_head=4,
    LFE_num_heads=2,
    LFE_num_id_token=2,
    LFE_num_querie=3,
    LFE_output_dim=32,
    LFE_ff_mult=2,
)
CONFIGS = {
    "2 layers, interval 1, rotary, batch 2, 2 scales": dict(
        num_layers=2,
        cross_attn_interval=1,
        use_rotary_positional_embeddings=True,
        local_face_scale=1.0,
        LFE_depth=2,
        LFE_num_scale=2,
        batch=2,
    ),
    "4 layers, interval 2, sincos, scale 0.7, batch 1, 3 scales": dict(
        num_layers=4,
        cross_attn_interval=2,
        use_rotary_positional_embeddings=False,
        local_face_scale=0.7,
        LFE_depth=3,
        LFE_num_scale=3,
        batch=1,
    ),
    "6 layers, interval 2, rotary, kps, scale 1.5, batch 3, 5 scales": dict(
        num_layers=6,
        cross_attn_interval=2,
        use_rotary_positional_embeddings=True,
        local_face_scale=1.5,
        is_kps=True,
        LFE_depth=5,
        LFE_num_scale=5,
        batch=3,
    ),
    "3 layers, interval 3, rotary, batch 2, 1 scale": dict(
        num_layers=3,
        cross_attn_interval=3,
        use_rotary_positional_embeddings=True,
        local_face_scale=2.0,
        LFE_depth=2,
        LFE_num_scale=1,
        batch=2,
    ),
}


def tiny_consisid(options: dict, seed: int = 0) -> ConsisIDTransformer3DModel:
    torch.manual_seed(seed)
    config = {**BASE, **{k: v for k, v in options.items() if k != "batch"}}
    model = ConsisIDTransformer3DModel(**config).eval()
    with torch.no_grad():  # no parameter left at a symmetric init (zeros/ones would hide mapping mistakes)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def inputs(model: ConsisIDTransformer3DModel, batch: int, frames: int = 3, size: int = 8) -> dict:
    g = torch.Generator().manual_seed(1)
    config = model.config
    rotary = None
    if config.use_rotary_positional_embeddings:
        rotary = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=((0, 0), (size // 2, size // 2)),
            grid_size=(size // 2, size // 2),
            temporal_size=frames,
        )
    return dict(
        hidden_states=torch.randn(batch, frames, 32, size, size, generator=g),
        encoder_hidden_states=torch.randn(batch, config.max_text_seq_length, config.text_embed_dim, generator=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g),
        image_rotary_emb=rotary,
        id_cond=torch.randn(batch, config.LFE_id_dim, generator=g),
        id_vit_hidden=[torch.randn(batch, 5, config.LFE_vit_dim, generator=g) for _ in range(config.LFE_num_scale)],
    )


def converted(tmp_path, model) -> tuple:
    model.save_pretrained(tmp_path / "transformer")
    checkpoint, experiment = convert(
        "diffusers-consisid", str(tmp_path / "transformer"), str(tmp_path / "kit.ckpt"), []
    )
    assert experiment == "consisid_preview"
    return load_module(checkpoint).eval(), checkpoint


@pytest.mark.parametrize("name", list(CONFIGS))
def test_converted_model_matches_diffusers(tmp_path, name):
    options = CONFIGS[name]
    reference = tiny_consisid(options)
    module, _ = converted(tmp_path, reference)
    identity = module.plan.injectors["identity"]
    interval = options["cross_attn_interval"]
    assert identity.block_indices == list(range(0, options["num_layers"], interval))
    assert identity.site.value == "post_attn" and identity.scale == options["local_face_scale"]

    args = inputs(reference, options["batch"])
    with torch.no_grad():
        expected = reference(**args, return_dict=False)[0]
        conditions = {"id_cond": args["id_cond"], "id_vit_hidden": args["id_vit_hidden"]}
        injection = module.plan.prepare(conditions, BatchRandom(torch.Generator().manual_seed(0)))
        ours = module.backbone(
            args["hidden_states"],
            args["timestep"],
            args["encoder_hidden_states"],
            injection,
            image_rotary_emb=args["image_rotary_emb"],
        )
        drop_in = ConsisIDCompatTransformer(module)(**args)
    assert (ours - expected).abs().max() <= 1e-5
    assert type(drop_in) is type(reference(**args))
    assert (drop_in.sample - expected).abs().max() <= 1e-5


def test_convert_then_export_reproduces_every_tensor(tmp_path):
    reference = tiny_consisid(CONFIGS["6 layers, interval 2, rotary, kps, scale 1.5, batch 3, 5 scales"])
    _, checkpoint = converted(tmp_path, reference)
    export(str(checkpoint), "diffusers-consisid", str(tmp_path / "exported"))
    again = ConsisIDTransformer3DModel.from_pretrained(tmp_path / "exported")
    source, exported = reference.state_dict(), again.state_dict()
    assert source.keys() == exported.keys()
    for key in source:
        assert torch.equal(source[key], exported[key]), key
    private = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
    assert {k: v for k, v in again.config.items() if k not in private} == {
        k: v for k, v in reference.config.items() if k not in private
    }


def test_plans_without_a_consisid_form_refuse_and_export_to_the_kit_format(tmp_path):
    import hydra
    import lightning as L

    from tests.conftest import compose_config  # the repo's test helper composes real experiments

    cfg = compose_config(["experiment=plan_c"])
    L.seed_everything(0)
    module = hydra.utils.instantiate(cfg.model)
    from idvid.interop import save_module

    checkpoint = save_module(module, tmp_path / "plan_c.ckpt")
    with pytest.raises(ValueError, match=r"\(post_attn\), this plan uses attn_ffn.*--to idvid"):
        export(str(checkpoint), "diffusers-consisid", str(tmp_path / "nope"))
    out = export(str(checkpoint), "idvid", str(tmp_path / "kit"))
    transformer = CogVideoXTransformer3DModel.from_pretrained(out / "transformer")
    assert transformer.config.in_channels == 32
    assert torch.equal(transformer.proj_out.weight, module.backbone.transformer.proj_out.weight)
    assert (out / "injectors" / "identity" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "injectors" / "face_latent" / "config.json").is_file()


def test_compat_transformer_from_and_save_pretrained_round_trip(tmp_path):
    reference = tiny_consisid(CONFIGS["6 layers, interval 2, rotary, kps, scale 1.5, batch 3, 5 scales"])
    module, checkpoint = converted(tmp_path, reference)
    args = inputs(reference, batch=2)
    with torch.no_grad():
        expected = reference(**args).sample
        from_checkpoint = ConsisIDCompatTransformer.from_pretrained(checkpoint)
        assert (from_checkpoint(**args).sample - expected).abs().max() <= 1e-5
        from_checkpoint.save_pretrained(tmp_path / "saved")  # diffusers' ConsisID layout
        assert ConsisIDTransformer3DModel.from_pretrained(tmp_path / "saved").state_dict().keys() == (
            reference.state_dict().keys()
        )
        from_folder = ConsisIDCompatTransformer.from_pretrained(tmp_path / "saved")
        assert (from_folder(**args).sample - expected).abs().max() <= 1e-5


def demo_checkpoint(tmp_path, experiment: str, *overrides: str):
    """The model `fit experiment=<experiment>` starts from, at the demo's own sizes, saved as a kit checkpoint."""
    import hydra
    import lightning as L

    from idvid.interop import save_module
    from tests.conftest import compose_config

    cfg = compose_config([f"experiment={experiment}", *overrides])
    L.seed_everything(0)
    module = hydra.utils.instantiate(cfg.model)
    return module, save_module(module, tmp_path / f"{experiment}.ckpt")


@pytest.mark.parametrize("experiment", ["consisid_preview", "plan_f"])
def test_the_exportable_plans_export_at_the_demo_sizes(tmp_path, experiment):
    module, checkpoint = demo_checkpoint(tmp_path, experiment)
    out = export(str(checkpoint), "diffusers-consisid", str(tmp_path / "exported"))
    exported = ConsisIDTransformer3DModel.from_pretrained(out).state_dict()
    identity = module.plan.injectors["identity"].state_dict()
    for key, value in identity.items():
        assert torch.equal(exported[key], value), key


def test_a_cross_attention_width_diffusers_cannot_hold_names_the_fix(tmp_path):
    _, checkpoint = demo_checkpoint(tmp_path, "consisid_preview", "injectors.identity.extractor.output_dim=32")
    with pytest.raises(ValueError, match=r"output_dim=32.*int\(inner_dim \* 2 / 3\) = 21.*extractor.output_dim=21"):
        export(str(checkpoint), "diffusers-consisid", str(tmp_path / "nope"))


def test_missing_or_wrong_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No ConsisID transformer at .*_class_name"):
        convert("diffusers-consisid", str(tmp_path), str(tmp_path / "x.ckpt"), [])


def test_drop_in_runs_inside_consisid_pipeline_with_identical_frames(tmp_path):
    options = dict(CONFIGS["2 layers, interval 1, rotary, batch 2, 2 scales"], max_text_seq_length=16)
    options["text_embed_dim"] = 32
    reference = tiny_consisid(options)
    module, _ = converted(tmp_path, reference)

    # VAE, text encoder, tokenizer and scheduler of a tiny pipeline folder; the transformer is swapped.
    write_tiny_pipeline(tmp_path / "pipeline")
    components = {
        "vae": AutoencoderKLCogVideoX.from_pretrained(tmp_path / "pipeline" / "vae").eval(),
        "text_encoder": T5EncoderModel.from_pretrained(tmp_path / "pipeline" / "text_encoder").eval(),
        "tokenizer": AutoTokenizer.from_pretrained(tmp_path / "pipeline" / "tokenizer"),
        "scheduler": CogVideoXDPMScheduler.from_pretrained(tmp_path / "pipeline" / "scheduler"),
    }
    g = torch.Generator().manual_seed(3)
    face = torch.rand(1, 3, 64, 64, generator=g)
    id_cond = torch.randn(1, 10, generator=g)
    id_vit_hidden = [torch.randn(1, 5, 8, generator=g) for _ in range(2)]

    frames = []
    for transformer in (reference, ConsisIDCompatTransformer(module)):
        pipe = ConsisIDPipeline(transformer=transformer, **components)
        pipe.set_progress_bar_config(disable=True)
        result = pipe(
            image=face,
            prompt="a person smiling",
            height=64,
            width=64,
            num_frames=9,
            num_inference_steps=4,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(7),
            output_type="pt",
            id_cond=id_cond,
            id_vit_hidden=id_vit_hidden,
            max_sequence_length=16,
        )
        frames.append(result.frames)
    assert frames[0].shape == (1, 9, 3, 64, 64)
    assert (frames[0] - frames[1]).abs().max() <= 1e-5
