"""Inference: the denoising loop and (later) the sample verb."""
