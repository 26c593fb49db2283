"""diffusers' ``ConsisIDTransformer3DModel`` layout <-> the kit's ``consisid_preview`` model.

The released model is a CogVideoX transformer (identical block keys) plus
``local_facial_extractor.*`` and ``perceiver_cross_attention.<i>.*``, the i-th
cross-attention acting on the output of block ``i * cross_attn_interval``. In the
kit that is the CogVideoX backbone, a ``consisid.global_face_latent`` injector
(input_concat, no weights: the 32-channel input layer is the backbone's) and a
``consisid.local_face_cross_attention`` injector at site ``post_attn`` on blocks
``{every: cross_attn_interval}``.

Which kit plans can be written as a ConsisID transformer: exactly those with a
global face latent (with or without kps) and one local cross-attention at
``post_attn`` on blocks 0, k, 2k, ... covering all blocks of a model whose depth
is a multiple of k — ``consisid_preview`` and ``plan_f``. The other plans put
identity where diffusers' class has no place for it (``attn_ffn``, ``pre_attn``),
or have no face latent / no identity tokens (a, b, g); export them with
``--to idvid``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from diffusers import ConsisIDTransformer3DModel

from idvid.backbones.lora import without_lora
from idvid.injection import Site
from idvid.interop import ConvertedModel, load_diffusers_model, read_json_file
from idvid.registry import register_format
from idvid_consisid.injectors import GlobalFaceLatent, LocalFaceCrossAttention

IDENTITY_PREFIXES = ("local_facial_extractor.", "perceiver_cross_attention.")
# ConsisID config key -> LocalFacialExtractor argument
LFE_KEYS = {
    "LFE_id_dim": "id_dim",
    "LFE_vit_dim": "vit_dim",
    "LFE_depth": "depth",
    "LFE_dim_head": "dim_head",
    "LFE_num_heads": "heads",
    "LFE_num_id_token": "num_id_token",
    "LFE_num_querie": "num_queries",
    "LFE_output_dim": "output_dim",
    "LFE_ff_mult": "ff_mult",
    "LFE_num_scale": "num_scale",
}
CONSISID_ONLY_KEYS = {
    "is_train_face",
    "is_kps",
    "cross_attn_interval",
    "cross_attn_dim_head",
    "cross_attn_num_heads",
    "local_face_scale",
    *LFE_KEYS,
}


def transformer_folder(path: Path) -> Path:
    """Accept a ConsisID transformer folder or a pipeline folder holding one in ``transformer/``."""
    for candidate in (path, path / "transformer"):
        config = candidate / "config.json"
        if config.is_file() and read_json_file(config).get("_class_name") == "ConsisIDTransformer3DModel":
            return candidate
    raise FileNotFoundError(
        f"No ConsisID transformer at {path}: expected {path}/config.json or {path}/transformer/config.json with "
        f'"_class_name": "ConsisIDTransformer3DModel" next to its safetensors weights (the released '
        f"ConsisID-preview pipeline folder, or its transformer/ subfolder)."
    )


def is_pipeline_folder(path: Path) -> bool:
    return all((path / part).is_dir() for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"))


def kit_nodes_from_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backbone transformer config, injectors node) of the kit model equal to this ConsisID config."""
    if not config.get("is_train_face", False):
        raise ValueError(
            "This ConsisID transformer has is_train_face=false: it has no identity modules, so it is a plain "
            "CogVideoX-I2V transformer. Load it with backbone.pretrained=<pipeline folder> instead."
        )
    num_layers, interval = config["num_layers"], config["cross_attn_interval"]
    if num_layers % interval:
        raise ValueError(
            f"num_layers={num_layers} is not a multiple of cross_attn_interval={interval}: diffusers' ConsisID "
            f"indexes its cross-attentions by block // interval and cannot run such a model, so its weights "
            f"cannot be a valid source."
        )
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    if config["LFE_output_dim"] != int(inner / 3 * 2):
        raise ValueError(
            f"LFE_output_dim={config['LFE_output_dim']} differs from diffusers' cross-attention key width "
            f"int(inner_dim * 2 / 3)={int(inner / 3 * 2)}; such a ConsisID model cannot run in diffusers."
        )
    transformer = {k: v for k, v in config.items() if not k.startswith("_") and k not in CONSISID_ONLY_KEYS}
    injectors = {
        "face_latent": {"name": "consisid.global_face_latent", "use_kps": bool(config["is_kps"])},
        "identity": {
            "name": "consisid.local_face_cross_attention",
            "site": Site.POST_ATTN.value,
            "blocks": {"every": interval},
            "scale": float(config["local_face_scale"]),
            "cross_attn_dim_head": config["cross_attn_dim_head"],
            "cross_attn_heads": config["cross_attn_num_heads"],
            "extractor": {kit: config[key] for key, kit in LFE_KEYS.items()},
        },
    }
    return transformer, injectors


def _identity_injector(module) -> tuple[str, LocalFaceCrossAttention, GlobalFaceLatent]:
    """The (label, cross-attention, face latent) of a plan expressible as a ConsisID transformer, or a clear error."""
    injectors = dict(module.plan.injectors.items())
    identity = [(label, i) for label, i in injectors.items() if isinstance(i, LocalFaceCrossAttention)]
    face = [i for i in injectors.values() if isinstance(i, GlobalFaceLatent)]
    num_layers = module.backbone.info.num_layers
    problems = []
    if len(identity) != 1 or len(face) != 1 or len(injectors) != 2:
        problems.append(
            f"it must have exactly one consisid.global_face_latent and one consisid.local_face_cross_attention "
            f"injector (it has: {', '.join(f'{k}={type(v).__name__}' for k, v in injectors.items()) or 'none'})"
        )
    else:
        cross = identity[0][1]
        if cross.site is not Site.POST_ATTN:
            problems.append(
                f"diffusers applies the cross-attention after a block (post_attn), this plan uses {cross.site.value}"
            )
        inner_dim = module.backbone.info.hidden_size
        kv_dim, diffusers_kv_dim = cross.local_facial_extractor.output_dim, int(inner_dim / 3 * 2)
        if kv_dim != diffusers_kv_dim:
            problems.append(
                f"its identity tokens are output_dim={kv_dim} wide, but diffusers derives the cross-attention key "
                f"width from the transformer as int(inner_dim * 2 / 3) = {diffusers_kv_dim} (inner_dim "
                f"{inner_dim}); train it with injectors.{identity[0][0]}.extractor.output_dim={diffusers_kv_dim}"
            )
        blocks = cross.block_indices
        interval = blocks[1] - blocks[0] if len(blocks) > 1 else num_layers
        if blocks != list(range(0, num_layers, interval)) or num_layers % interval:
            problems.append(
                f"its cross-attention blocks {blocks} are not 0, k, 2k, ... of a {num_layers}-block model with "
                f"depth a multiple of k"
            )
    if problems:
        raise ValueError(
            "This model cannot be written as a diffusers ConsisIDTransformer3DModel: "
            + "; ".join(problems)
            + ". Export it with `--to idvid` (the kit's own diffusers-style folder) instead."
        )
    return identity[0][0], identity[0][1], face[0]


@register_format("diffusers-consisid")
class DiffusersConsisIDFormat:
    """Read and write diffusers' ``ConsisIDTransformer3DModel`` folders (e.g. the released ConsisID-preview)."""

    def read(self, path: Path) -> ConvertedModel:
        folder = transformer_folder(path)
        source = load_diffusers_model(ConsisIDTransformer3DModel, folder)
        transformer, injectors = kit_nodes_from_config(dict(source.config))
        state_dict = {}
        for key, value in source.state_dict().items():
            prefix = "plan.injectors.identity." if key.startswith(IDENTITY_PREFIXES) else "backbone.transformer."
            state_dict[prefix + key] = value
        backbone = {"name": "cogvideox", "transformer": transformer, "pretrained": None}
        notes = []
        if is_pipeline_folder(path):
            backbone["pretrained"] = str(path.resolve())  # VAE, text encoder, tokenizer, scheduler come from there
        else:
            notes.append(
                f"{path} holds only the transformer; the checkpoint uses the experiment's VAE and text encoder "
                f"config. Convert the pipeline folder (with vae/, text_encoder/, tokenizer/, scheduler/) to get "
                f"the whole model from one path."
            )
        return ConvertedModel(
            experiment="consisid_preview",
            backbone=backbone,
            injectors=injectors,
            state_dict=state_dict,
            notes=notes,
        )

    def write(self, module, out: Path) -> None:
        config_dict(module)  # raises a clear error when the plan has no ConsisID form
        model = consisid_transformer(module)
        model.save_pretrained(out)


def config_dict(module) -> dict[str, Any]:
    """The ``ConsisIDTransformer3DModel`` config equal to a kit model (raises if there is none)."""
    _, cross, face = _identity_injector(module)
    transformer_config = dict(module.backbone.transformer.config)
    accepted = inspect.signature(ConsisIDTransformer3DModel.__init__).parameters
    config = {k: v for k, v in transformer_config.items() if not k.startswith("_") and k in accepted}
    lfe = cross.local_facial_extractor
    config.update(
        is_train_face=True,
        is_kps=face.use_kps,
        cross_attn_interval=(cross.block_indices[1] - cross.block_indices[0])
        if len(cross.block_indices) > 1
        else module.backbone.info.num_layers,
        cross_attn_dim_head=cross.perceiver_cross_attention[0].to_q.out_features
        // cross.perceiver_cross_attention[0].heads,
        cross_attn_num_heads=cross.perceiver_cross_attention[0].heads,
        local_face_scale=float(cross.scale),
        **{key: lfe.sizes[kit] for key, kit in LFE_KEYS.items()},
    )
    return config


def consisid_transformer(module) -> ConsisIDTransformer3DModel:
    """A diffusers ``ConsisIDTransformer3DModel`` holding the kit model's weights, tensor for tensor."""
    label, _, _ = _identity_injector(module)
    model = ConsisIDTransformer3DModel(**config_dict(module))
    # ConsisID's layout has no separate LoRA: a LoRA-trained model is written with the adapter folded in.
    state_dict = dict(without_lora(module.backbone.transformer, merge=True).state_dict())
    for key, value in module.plan.injectors[label].state_dict().items():
        state_dict[key] = value
    model.load_state_dict(state_dict, strict=True)
    return model.to(next(module.backbone.transformer.parameters()).dtype)
