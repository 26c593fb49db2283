"""The core's own plugins, registered through the core's own ``idvid.plugins`` entry point (pyproject.toml).

The registry never imports this module: it is loaded with every other plugin package.
"""

import idvid.backbones.cogvideox  # noqa: F401  (registers "cogvideox")
import idvid.backbones.wan  # noqa: F401  (registers "wan")
import idvid.conditioning.face_embedding  # noqa: F401  (registers "face_embedding")
import idvid.conditioning.reference_latents  # noqa: F401  (registers "reference_latents")
import idvid.conditioning.reference_pass  # noqa: F401  (registers "reference_pass")
import idvid.evaluation.metrics  # noqa: F401  (registers the metrics)
import idvid.evaluation.pixel_identity  # noqa: F401  (registers pixel_identity)
import idvid.evaluation.video_metrics  # noqa: F401  (registers "sync", "lpips", "fvd")
import idvid.faces.dlib_analyzer  # noqa: F401  (registers the "dlib" face backend)
import idvid.faces.insightface_analyzer  # noqa: F401  (registers the "insightface" face backend)
import idvid.interop  # noqa: F401  (registers the "idvid" checkpoint format)
import idvid.sampling.noise_priors  # noqa: F401  (registers the "gaussian" noise prior)
import idvid.training.losses  # noqa: F401  (registers the losses)
import idvid.training.recipe  # noqa: F401  (registers the core recipe steps "text_drop", "image_latent_dropout")
