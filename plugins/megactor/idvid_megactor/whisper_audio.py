"""``megactor.whisper_audio``: per-frame audio tokens from a frozen Whisper encoder (MegActor-Sigma's audio path).

The batch carries a clip's log-mel window (``audio_mel`` ``[B, bins, L]``, from the first sampled
frame on) and each sampled frame's time in it (``audio_frame_times`` ``[B, F]``, seconds), as agreed in
the kit's audio interface (``idvid.data.audio``). The encoder turns the mel into tokens at 50 per
second (100 mel frames per second, halved by its second convolution); each video frame gets the
``window`` tokens centred on its time. Tokens outside the clip's audio are zero, and so are all the
tokens of a clip without audio (``has_audio`` False), which is also how the modality recipe drops audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import WhisperConfig, WhisperModel

from idvid.backbones.info import BackboneInfo
from idvid.conditioning import Conditioner
from idvid.errors import ConfigError, MissingFileError, UserError
from idvid.registry import register_conditioner

#: Whisper's feature extractor: hop 160 at 16 kHz (``idvid.data.audio.MEL_FRAMES_PER_SECOND``)
MEL_FRAMES_PER_SECOND = 100

#: A Whisper at demo scale: random weights, 2 encoder layers of width 32, 2 s of mel (200 frames).
TINY_WHISPER = dict(
    num_mel_bins=80,
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=64,
    vocab_size=64,
    max_source_positions=100,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)


def write_tiny_whisper(folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random ``WhisperModel`` folder (``save_pretrained``) for the demo and tests."""
    folder = Path(folder)
    torch.manual_seed(seed)
    WhisperModel(WhisperConfig(**{**TINY_WHISPER, **overrides})).save_pretrained(folder)
    return folder


def load_whisper_encoder(folder: str | Path) -> torch.nn.Module:
    """The encoder of the ``WhisperModel`` saved in ``folder``; a clear error when it is not there."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise MissingFileError(
            f"No Whisper model at {path} (conditioners.<label>.pretrained): expected a transformers "
            f"WhisperModel folder there (config.json + model.safetensors).",
            "Put a Whisper checkpoint there, e.g. openai/whisper-tiny as saved by "
            "`WhisperModel.from_pretrained(...).save_pretrained(folder)` (MegActor-Sigma uses Whisper-tiny, 384-d), "
            "or set pretrained=null to build the tiny random one of the demo.",
        )
    return WhisperModel.from_pretrained(path).get_encoder()


@register_conditioner("megactor.whisper_audio")
class WhisperAudio(Conditioner):
    """``audio_tokens`` ``[B, F, window, D]``: the Whisper encoder tokens around each video frame's time.

    ``pretrained``: a local ``WhisperModel`` folder (Whisper-tiny: D = 384); null builds a random one
    from ``config`` (the demo's tiny Whisper). Frozen: a feature extractor, as in MegActor-Sigma.
    """

    produces = ("audio_tokens",)
    reads = ("audio_mel", "audio_frame_times", "has_audio")

    def __init__(
        self,
        backbone: BackboneInfo,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        window: int = 10,
    ):
        super().__init__(backbone)
        if window < 1:
            raise ConfigError(f"megactor.whisper_audio: window={window} tokens.", "Use a window of 1 or more tokens.")
        self.pretrained = str(pretrained) if pretrained else None
        if self.pretrained:
            self.encoder = load_whisper_encoder(self.pretrained)
        else:
            self.encoder = WhisperModel(WhisperConfig(**{**TINY_WHISPER, **(config or {})})).get_encoder()
        self.encoder.requires_grad_(False).eval()
        self.window = int(window)
        strides = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]
        self.mel_frames = self.encoder.config.max_source_positions * strides
        self.tokens_per_second = MEL_FRAMES_PER_SECOND / strides

    @property
    def width(self) -> int:
        return self.encoder.config.d_model

    @property
    def audio_mel_frames(self) -> int:
        """The mel window it takes (the conditioner contract's: ``animate`` builds it without being told)."""
        return self.mel_frames

    def train(self, mode: bool = True) -> "WhisperAudio":
        super().train(mode)
        self.encoder.eval()  # frozen feature extractor: no dropout
        return self

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, bins, L]`` log-mel -> ``[B, T, D]`` tokens (a shorter mel zero-padded to Whisper's length)."""
        length = mel.shape[-1]
        if length > self.mel_frames:
            raise ConfigError(
                f"audio_mel has {length} mel frames; this Whisper encoder takes at most {self.mel_frames} "
                f"(max_source_positions={self.encoder.config.max_source_positions}).",
                f"Set data.audio_mel_frames={self.mel_frames} (animate: --audio-mel-frames {self.mel_frames}), or use "
                f"a Whisper whose max_source_positions is "
                f"{(length + 1) // 2} or more.",
            )
        mel = torch.nn.functional.pad(mel, (0, self.mel_frames - length))
        return self.encoder(input_features=mel).last_hidden_state

    def windows(self, tokens: torch.Tensor, frame_times: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` tokens and ``[B, F]`` times -> ``[B, F, window, D]``, zero outside the audio."""
        centre = torch.round(frame_times * self.tokens_per_second).long()
        offsets = torch.arange(self.window, device=tokens.device) - self.window // 2
        index = centre.unsqueeze(-1) + offsets  # [B, F, W]
        inside = (index >= 0) & (index < tokens.shape[1])
        rows = torch.arange(tokens.shape[0], device=tokens.device).view(-1, 1, 1)
        return tokens[rows, index.clamp(0, tokens.shape[1] - 1)] * inside.unsqueeze(-1).to(tokens)

    def forward(self, batch: Mapping[str, Any], backbone, random) -> dict[str, Any]:
        missing = [key for key in self.reads if key not in batch]
        if missing:
            raise UserError(
                f"megactor.whisper_audio needs the clips' audio, and the batch has no {', '.join(missing)}.",
                "Use a manifest preprocessed with audio (each clip's audio track and its mel window), or train "
                "without audio: experiment=megactor_stage1_visual (or conditioners.audio=null and no audio injector).",
            )
        device = self.encoder.conv1.weight.device
        tokens = self.encode(batch["audio_mel"].float().to(device))
        per_frame = self.windows(tokens, batch["audio_frame_times"].float().to(device))
        has_audio = torch.as_tensor(batch["has_audio"], device=device).bool()
        return {"audio_tokens": per_frame * has_audio.view(-1, 1, 1, 1).to(per_frame)}
