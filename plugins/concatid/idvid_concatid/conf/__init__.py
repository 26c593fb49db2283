"""Concat-ID's Hydra configs, announced as an ``idvid.configs`` entry point."""
