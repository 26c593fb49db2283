"""idvid: a training kit for identity-preserving text-to-video on diffusion transformers."""

__version__ = "0.1.0"
