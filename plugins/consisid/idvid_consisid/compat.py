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

Its config is the ``ConsisIDTransformer3DModel`` config of the same model, so the
pipeline reads patch size, sample sizes, channels and ``is_kps`` as usual. Only
plans that have a ConsisID form can be wrapped (``consisid_preview``, ``plan_f``);
see ``idvid_consisid.diffusers_format``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from idvid.injection import NO_INJECTION
from idvid_consisid.diffusers_format import config_dict


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

    def _injection(self, id_cond: torch.Tensor | None, id_vit_hidden: list[torch.Tensor] | None, dtype: torch.dtype):
        if id_cond is None:
            return NO_INJECTION
        key = (id(id_cond), id_cond._version, *(id(h) for h in id_vit_hidden), dtype)
        if torch.is_grad_enabled() or key != self._cached_key:
            conditions = {"id_cond": id_cond.to(dtype), "id_vit_hidden": [h.to(dtype) for h in id_vit_hidden]}
            self._cached_injection = self.plan.prepare(conditions)
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
