"""OmegaConf resolvers that let configs derive sizes from the data instead of hard-coding them.

- ``${idvid.face_embedding_dim:${data.manifest}}``: the identity embedding width of the data set
  (its annotations' ``embedding_dim``; the demo's is dlib's 128).
- ``${idvid.add:a,b,...}``: integer sum, e.g. face embedding + CLIP projection = the LFE's ``id_cond`` width.
- ``${idvid.toy_manifest:train|heldout|all[,all|small]}``: a split of a toy identity set (built on first use;
  ``all`` faces by default, ``small`` for the few-minute demo).
- ``${idvid.codec_statistics:manifest,kind,levels,frames,stride,height,width}``: a latent codec's per-channel
  mean and std over a data set's clips (``idvid.backbones.codecs``; null manifest = the demo).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def face_embedding_dim(manifest: str | None) -> int:
    """Embedding width of `manifest`'s clips; None means the bundled demo (built with the dlib backend)."""
    if manifest in (None, "", "null"):
        from idvid.faces import DlibFaceAnalyzer  # the demo's backend; reading a class attribute loads no model

        return int(DlibFaceAnalyzer.embedding_dim)
    from idvid.data.manifest import manifest_embedding_dim

    return manifest_embedding_dim(manifest)


def toy_manifest(split: str, toy_set: str = "all") -> str:
    from idvid.toy import toy_manifest as build_toy_manifest

    return str(build_toy_manifest(split, toy_set=toy_set))


def codec_statistics(manifest, kind, levels, num_frames, frame_stride, height, width):
    from idvid.backbones.codecs import codec_statistics as compute

    if manifest in (None, "", "null"):
        from idvid.demo import build_demo

        manifest = build_demo()
    sizes = (int(levels), int(num_frames), int(frame_stride), int(height), int(width))
    return OmegaConf.create(compute(manifest, str(kind), *sizes))  # a plain dict would not resolve


def register_resolvers() -> None:
    """Register idvid's resolvers (idempotent; configs are composed only after idvid.cli is imported)."""
    OmegaConf.register_new_resolver("idvid.face_embedding_dim", face_embedding_dim, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("idvid.toy_manifest", toy_manifest, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("idvid.codec_statistics", codec_statistics, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("idvid.add", lambda *values: sum(int(v) for v in values), replace=True)
