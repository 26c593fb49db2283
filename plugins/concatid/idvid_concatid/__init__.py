"""Concat-ID (Zhong et al., 2025) for idvid: identity through the backbone's own self-attention.

* ``concatid.reference`` (injector, site ``sequence_concat``): the white-background face crop's VAE
  latent (``face_latent`` of the core's ``reference_latents`` conditioner), patch-embedded by the
  backbone's own embedding and appended after the video's last frame, full attention, the video's
  timestep (``idvid_concatid.injector``).
* Its recipe (``conf/recipe/concatid.yaml``) pairs each clip with a reference from outside its
  window (the core's ``cross_reference`` step) and drops captions for guidance; the experiment
  ``concatid`` trains the whole transformer or, with ``model.trainable=lora``, LoRA of rank 4 on
  q, k, v, o and the FFN (Concat-ID's Wan script default).

Installed as a separate distribution (``idvid-concatid``) that registers through the ``idvid.plugins``
entry point, exactly as a third-party method would.
"""

from idvid_concatid.injector import ConcatIdReference

__all__ = ["ConcatIdReference"]
