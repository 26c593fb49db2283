"""A drop-in for diffusers' ``ConsisIDTransformer3DModel``, backed by a kit model.

diffusers' ``ConsisIDPipeline`` can run a kit-trained model unchanged::

    from diffusers import ConsisIDPipeline
    from idvid.interop import load_module
    from idvid_consisid.compat import ConsisIDCompatTransformer

    module = load_module("outputs/consisid_preview/<run>/checkpoints/last.ckpt")
    pipe = ConsisIDPipeline(
        vae=module.backbone.vae, text_encoder=module.backbone.text_encoder, tokenizer=module.backbone.tokenizer,
        transformer=ConsisIDCompatTransformer(module), scheduler=module.backbone.scheduler,
    )
    video = pipe(image=face, prompt="...", id_cond=id_cond, id_vit_hidden=id_vit_hidden).frames[0]

Or in one line, from a kit checkpoint or a diffusers ConsisID folder::

    transformer = ConsisIDCompatTransformer.from_pretrained("last.ckpt")   # or "exported/"
    transformer.save_pretrained("exported/")  # diffusers' ConsisIDTransformer3DModel layout

Its config is the ``ConsisIDTransformer3DModel`` config of the same model, so the
pipeline reads patch size, sample sizes, channels and ``is_kps`` as usual. Only
plans that have a ConsisID form can be wrapped (``consisid_preview``, ``plan_f``);
see ``idvid_consisid.diffusers_format``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from idvid.injection import NO_INJECTION
from idvid.interop import is_deepspeed_checkpoint, load_module
from idvid.randomness import BatchRandom
from idvid.verbs.convert import convert
from idvid_consisid.diffusers_format import config_dict, consisid_transformer


class ConsisIDCompatTransformer(ModelMixin, ConfigMixin):
    """Same forward keywords and output type as ``ConsisIDTransformer3DModel``; the kit's backbone + injectors inside.

    The input-concat injector is not used here: the pipeline concatenates the image
    latents itself. The identity tokens are cached while ``id_cond``/``id_vit_hidden``
    stay the same tensors and no gradient is needed, so a pipeline that passes the same
    conditions at every denoising step runs the local facial extractor once per video.
    """

    config_name = "config.json"

    def __init__(self, module):
        super().__init__()
        self.register_to_config(**config_dict(module))
        self.backbone = module.backbone
        self.plan = module.plan
        self._cached_key: tuple | None = None
        self._cached_injection = None

    @classmethod
    def from_pretrained(cls, path: str | Path, ema: bool = False, torch_dtype: torch.dtype | None = None, **kwargs):
        """Wrap a kit checkpoint (a ``.ckpt`` from ``fit``/``convert``, or a DeepSpeed folder), or a diffusers
        ``ConsisIDTransformer3DModel`` folder (``save_pretrained``'s, ``export --to diffusers-consisid``'s, the
        released one). ``ema``: the checkpoint's EMA weights. Hub names and diffusers' loading options
        (variants, device maps, ...) are not supported: this class is built from a local kit model."""
        if kwargs:
            raise TypeError(
                f"ConsisIDCompatTransformer.from_pretrained takes a local path, ema and torch_dtype; got "
                f"{sorted(kwargs)}. For diffusers' options load ConsisIDTransformer3DModel.from_pretrained instead."
            )
        path = Path(path)
        if path.is_dir() and not is_deepspeed_checkpoint(path):
            if ema:
                raise ValueError(f"{path} is a diffusers folder: it holds no EMA weights (ema=True needs a kit .ckpt).")
            with tempfile.TemporaryDirectory() as scratch:
                checkpoint, _ = convert("diffusers-consisid", str(path), str(Path(scratch) / "converted.ckpt"), [])
                module = load_module(checkpoint)
        else:
            module = load_module(path, ema=ema)
        model = cls(module.eval())
        return model.to(torch_dtype) if torch_dtype is not None else model

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Write diffusers' ``ConsisIDTransformer3DModel`` folder (what ``export --to diffusers-consisid`` writes):
        it loads with that class or with ``ConsisIDCompatTransformer.from_pretrained``."""
        consisid_transformer(self).save_pretrained(save_directory, **kwargs)

    def _injection(self, id_cond: torch.Tensor | None, id_vit_hidden: list[torch.Tensor] | None, dtype: torch.dtype):
        if id_cond is None:
            return NO_INJECTION
        key = (id(id_cond), id_cond._version, *(id(h) for h in id_vit_hidden), dtype)
        if torch.is_grad_enabled() or key != self._cached_key:
            conditions = {"id_cond": id_cond.to(dtype), "id_vit_hidden": [h.to(dtype) for h in id_vit_hidden]}
            # diffusers' pipeline passes no generator here; ConsisID's injectors draw nothing while preparing.
            self._cached_injection = self.plan.prepare(conditions, BatchRandom(torch.default_generator))
            self._cached_key = None if torch.is_grad_enabled() else key
        return self._cached_injection

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: Any,
        timestep_cond: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        id_cond: torch.Tensor | None = None,
        id_vit_hidden: list[torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
            raise NotImplementedError(
                "attention_kwargs['scale'] (a LoRA scale) is not supported by ConsisIDCompatTransformer; "
                "merge LoRA weights into the kit model first."
            )
        injection = self._injection(id_cond, id_vit_hidden, hidden_states.dtype)
        sample = self.backbone(
            hidden_states,
            timestep,
            encoder_hidden_states,
            injection,
            image_rotary_emb=image_rotary_emb,
            timestep_cond=timestep_cond,
        )
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)
