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
* recipe steps ``consisid.cross_face_reference``, ``consisid.reference_noise``,
  ``consisid.dynamic_mask_loss``, ``consisid.drop_token``, ``consisid.coarse_to_fine``
  (``idvid_consisid.recipe``; composed as ``recipe=consisid`` by its experiments).
* ``consisid`` (dataset importer): ConsisID's released annotation layout -> the manifest format
  (``preprocess data.importer=consisid data.source=total_train_data.txt``).

Its configs (``idvid_consisid.conf``: the plans a-g and consisid_preview as experiments, the
injector, conditioner and recipe nodes, the Table-3 ablation) reach the CLI through the ``idvid.configs``
entry point.

Installed as a separate distribution (``idvid-consisid``) that registers through the
``idvid.plugins`` entry point, exactly as a third-party method would.
"""

from idvid_consisid.annotation_import import import_consisid
from idvid_consisid.conditioner import IdentityFeatures
from idvid_consisid.diffusers_format import DiffusersConsisIDFormat
from idvid_consisid.injectors import GlobalFaceLatent, LocalFaceCrossAttention
from idvid_consisid.perceiver import LocalFacialExtractor, PerceiverAttention, perceiver_cross_attention
from idvid_consisid.recipe import CoarseToFine, CrossFaceReference, DropToken, DynamicMaskLoss, ReferenceNoise

__all__ = [
    "CoarseToFine",
    "CrossFaceReference",
    "DiffusersConsisIDFormat",
    "DropToken",
    "DynamicMaskLoss",
    "GlobalFaceLatent",
    "IdentityFeatures",
    "LocalFaceCrossAttention",
    "LocalFacialExtractor",
    "PerceiverAttention",
    "ReferenceNoise",
    "import_consisid",
    "perceiver_cross_attention",
]
