"""The kit's Hydra configs (config groups as folders); found by the CLI as ``pkg://idvid.conf``."""
