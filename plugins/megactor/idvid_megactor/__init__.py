"""MegActor-Sigma (Yang et al., 2024) for idvid, piece by piece on the kit's DiTs.

* ``megactor.whisper_audio`` (conditioner): per-frame audio tokens from a frozen Whisper encoder.
* ``megactor.audio_attention`` (injector, ``attn_ffn``): each frame's video tokens attend to its audio
  window; ``audio_scale`` x attention, zero-initialised.
* ``megactor.driving_frames`` (conditioner) + ``megactor.driven_encoder`` (injector, ``input_concat``):
  the driving frames' motion features concatenated on channels.
* ``megactor.temporal_attention`` (injector, ``attn_ffn`` of odd blocks): attention across frames.
* ``megactor.reference_attention`` (injector, ``attn_ffn`` of the last blocks): the reference transformer's
  features (the core ``reference_pass`` conditioner, ``trainable: true``) by cross-attention.
* ``megactor.modality_control``, ``megactor.drive_augmentation`` (recipe steps): modality-decoupled
  control (visual / audio / mixed, face-drop) and driving-frame augmentations against identity leakage.

Installed as a separate distribution (``idvid-megactor``) that registers through the ``idvid.plugins``
entry point, exactly as a third-party method would; its configs reach the CLI through ``idvid.configs``.
"""

from idvid_megactor.audio_attention import AudioAttention
from idvid_megactor.drive_augmentation import DriveAugmentation
from idvid_megactor.driven_encoder import DrivenEncoder, DrivingFrames
from idvid_megactor.modality import ModalityControl
from idvid_megactor.reference_attention import ReferenceAttention
from idvid_megactor.temporal_attention import TemporalAttention
from idvid_megactor.whisper_audio import WhisperAudio, write_tiny_whisper

__all__ = [
    "AudioAttention",
    "DriveAugmentation",
    "DrivenEncoder",
    "DrivingFrames",
    "ModalityControl",
    "ReferenceAttention",
    "TemporalAttention",
    "WhisperAudio",
    "write_tiny_whisper",
]
