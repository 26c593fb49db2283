"""Config groups of the MegActor-Sigma plugin (the idvid.configs entry point): experiment/, recipe/, conditioners/."""
