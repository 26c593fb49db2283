"""OmegaConf resolvers that let configs derive sizes from the data instead of hard-coding them.

- ``${idvid.face_embedding_dim:${data.manifest}}``: the identity embedding width of the data set
  (its annotations' ``embedding_dim``; the demo's is dlib's 128).
- ``${idvid.add:a,b,...}``: integer sum, e.g. face embedding + CLIP projection = the LFE's ``id_cond`` width.
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


def register_resolvers() -> None:
    """Register idvid's resolvers (idempotent; configs are composed only after idvid.cli is imported)."""
    OmegaConf.register_new_resolver("idvid.face_embedding_dim", face_embedding_dim, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("idvid.add", lambda *values: sum(int(v) for v in values), replace=True)
