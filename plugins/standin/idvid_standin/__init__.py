"""Stand-In (Xue et al., 2025) for idvid: a light identity branch inside the backbone's self-attention.

* ``standin.reference`` (injector, site ``sequence_concat``): the reference face's VAE latent as
  tokens modulated at timestep 0 (clean), placed at rotary frame -1 with rows and columns past the
  video's, ``reference_isolated`` attention
  (the reference never reads the video, so its keys and values are cached once per video at sampling),
  and a LoRA (rank 128) on the reference tokens' own q, k, v projections: the video tokens' path
  through the backbone is the base model's, bit for bit (``idvid_standin.injector``).
* The experiment ``standin`` trains only that LoRA (``model.trainable=injectors``).
* ``convert --from standin FILE`` reads Stand-In's released LoRA file (``idvid_standin.weights``).

Installed as a separate distribution (``idvid-standin``) that registers through the ``idvid.plugins``
entry point, exactly as a third-party method would.
"""

from idvid_standin.injector import StandInReference
from idvid_standin.weights import StandInLoraFormat, read_standin_lora

__all__ = ["StandInLoraFormat", "StandInReference", "read_standin_lora"]
