"""NaN and divergence guard: skip steps whose loss or gradient is not finite, stop after K in a row."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """Raised when too many consecutive steps were non-finite; the message says where the last good weights are."""


class NonFiniteGuard:
    """Counts skipped steps. ``max_consecutive_steps`` bad steps in a row mean the run has diverged."""

    def __init__(self, max_consecutive_steps: int = 5):
        if max_consecutive_steps < 1:
            raise ValueError(f"max_consecutive_steps={max_consecutive_steps} must be >= 1.")
        self.max_consecutive_steps = max_consecutive_steps
        self.consecutive = 0
        self.total = 0

    def bad_step(self) -> None:
        self.consecutive += 1
        self.total += 1

    def good_step(self) -> None:
        self.consecutive = 0

    @property
    def should_stop(self) -> bool:
        return self.consecutive >= self.max_consecutive_steps
