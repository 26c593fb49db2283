"""Metrics on generated videos (identity, text, FID, frequency analysis) and the `evaluate` verb."""
