"""Backbone adapters: one per DiT family. Only these know a backbone's block internals."""

from idvid.backbones.info import BackboneInfo

__all__ = ["BackboneInfo"]
