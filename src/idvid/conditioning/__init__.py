"""Conditioners turn a batch (reference photo, keypoints, audio, ...) into named conditions."""

from idvid.conditioning.base import (
    SAMPLING_BATCH_KEYS,
    Conditioner,
    check_sampling_inputs,
    repeat_batch,
    run_conditioners,
)

__all__ = ["SAMPLING_BATCH_KEYS", "Conditioner", "check_sampling_inputs", "repeat_batch", "run_conditioners"]
