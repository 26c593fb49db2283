"""The core's own plugins: imported by the registry before any entry point."""

import idvid.backbones.cogvideox  # noqa: F401  (registers "cogvideox")
import idvid.backbones.wan  # noqa: F401  (registers "wan")
import idvid.conditioning.reference_latents  # noqa: F401  (registers "reference_latents")
import idvid.interop  # noqa: F401  (registers the "idvid" checkpoint format)
import idvid.training.losses  # noqa: F401  (registers the losses)
