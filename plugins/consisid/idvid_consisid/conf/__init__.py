"""ConsisID's Hydra configs (experiments, injectors, conditioners), announced as an ``idvid.configs`` entry point."""
