"""ConsisID for idvid: frequency-decomposed identity injection (Yuan et al., CVPR 2025).

* ``consisid.global_face_latent`` (input_concat): the global facial extractor's low-frequency
  path: the reference face latent at latent frame 0 and the keypoint drawing latent at frame 1.
* ``consisid.local_face_cross_attention`` (any in-block site): the local facial extractor
  (a Q-Former/Perceiver over ``id_cond`` and multi-depth ViT features) and perceiver
  cross-attention modules that add ``scale * CA(identity tokens, video tokens)``.
* ``diffusers-consisid`` (checkpoint format): convert from / export to diffusers'
  ``ConsisIDTransformer3DModel`` folders, e.g. the released ConsisID-preview.
* ``consisid.identity_features`` (conditioner): ``id_cond`` = face-recognition embedding +
  CLIP image embedding, ``id_vit_hidden`` = CLIP ViT hidden states at several depths.

Installed as a separate distribution (``idvid-consisid``) that registers through the
``idvid.plugins`` entry point, exactly as a third-party method would.
"""

from idvid_consisid.conditioner import IdentityFeatures
from idvid_consisid.diffusers_format import DiffusersConsisIDFormat
from idvid_consisid.injectors import GlobalFaceLatent, LocalFaceCrossAttention
from idvid_consisid.perceiver import LocalFacialExtractor, PerceiverAttention, perceiver_cross_attention

__all__ = [
    "DiffusersConsisIDFormat",
    "GlobalFaceLatent",
    "IdentityFeatures",
    "LocalFaceCrossAttention",
    "LocalFacialExtractor",
    "PerceiverAttention",
    "perceiver_cross_attention",
]
