"""Magic-Me / Video Custom Diffusion (Ma et al., 2024) for idvid, piece by piece on the kit's DiTs.

* ``magicme.gaussian_3d`` (noise prior): initial noise correlated across latent frames,
  Cov(frame m, frame n) = gamma^|m-n| (``idvid_magicme.noise_prior``).
* ``magicme.id_tokens`` (injector, site ``text_tokens``): extended ID tokens, K new text tokens with
  learned embedding rows, named in prompts by ``<id>``; ``magicme-id-tokens`` (format) exports them
  as a small safetensors file (``idvid_magicme.id_tokens``).
* ``magicme.subject_mask_loss`` (recipe step): prompt-to-segmentation masked loss, the subject's
  mask from a local CLIPSeg folder or, offline, the head mask (landmark hull grown to the head), the
  BiSeNet parser or the clips' face masks (``idvid_magicme.masked_loss``, ``idvid_magicme.head_masks``).
* ``refine`` (verb): Face VCD and Tiled VCD, video-to-video refinement by partial re-denoising
  (``idvid_magicme.refine``, ``idvid_magicme.refine_verb``).

Its configs (``idvid_magicme.conf``) reach the CLI through the ``idvid.configs`` entry point.
Installed as a separate distribution (``idvid-magicme``) that registers through the
``idvid.plugins`` entry point, exactly as a third-party method would.
"""

from idvid_magicme.id_tokens import ExtendedIdTokens, IdTokensFormat, read_id_tokens, save_id_tokens
from idvid_magicme.masked_loss import ClipSegSegmenter, SubjectMaskLoss
from idvid_magicme.noise_prior import Gaussian3DNoise
from idvid_magicme.refine_verb import refine

__all__ = [
    "ClipSegSegmenter",
    "ExtendedIdTokens",
    "Gaussian3DNoise",
    "IdTokensFormat",
    "SubjectMaskLoss",
    "read_id_tokens",
    "refine",
    "save_id_tokens",
]
