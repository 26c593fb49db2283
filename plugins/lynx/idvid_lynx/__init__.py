"""Lynx (Sang et al., 2025, "Lynx: Towards High-Fidelity Personalized Video Generation") for idvid.

* ``lynx.id_adapter`` (injector): the face embedding through a Perceiver resampler into 16 identity
  tokens, cross-attended by the video tokens in every block (``idvid_lynx.adapters``).
* ``lynx.ref_adapter`` (injector): the video tokens of each block cross-attend to the reference
  image's tokens of the same block, from the core ``reference_pass`` conditioner.
* ``lynx`` (format): ``convert --from lynx`` reads Lynx's released adapters on a diffusers Wan
  transformer (``idvid_lynx.lynx_format``).

Its configs (``idvid_lynx.conf``: experiment ``lynx``) reach the CLI through the ``idvid.configs``
entry point. Installed as a separate distribution (``idvid-lynx``) that registers through the
``idvid.plugins`` entry point, exactly as a third-party method would.
"""

from idvid_lynx.adapters import AdapterAttention, LynxIdAdapter, LynxRefAdapter
from idvid_lynx.lynx_format import LynxFormat
from idvid_lynx.resampler import PerceiverResampler

__all__ = ["AdapterAttention", "LynxFormat", "LynxIdAdapter", "LynxRefAdapter", "PerceiverResampler"]
