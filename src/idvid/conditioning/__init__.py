"""Conditioners turn a batch (reference photo, keypoints, audio, ...) into named conditions."""

from idvid.conditioning.base import Conditioner, repeat_batch, run_conditioners

__all__ = ["Conditioner", "repeat_batch", "run_conditioners"]
