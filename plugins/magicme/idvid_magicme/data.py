"""One person's clips with placeholder captions: the data of an ID-token customisation run.

``OnePersonDataModule`` is the kit's ``IdentityVideoDataModule`` over the clips of one ``identity`` of
a manifest (the demo's by default), with the placeholder put into each caption in front of its
``subject`` word ("a person smiles" -> "a <id> person smiles"), so training and validation prompts
name the ID tokens. Captions that already contain the placeholder are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from idvid.data.datamodule import IdentityVideoDataModule
from idvid.data.manifest import read_manifest
from idvid.errors import ConfigError


def placeholder_caption(caption: str, placeholder: str, subject: str) -> str:
    """Put ``placeholder`` before the first ``subject`` word, or in front of the caption when there is none."""
    if placeholder in caption:
        return caption
    with_subject, found = re.subn(rf"\b{re.escape(subject)}\b", f"{placeholder} {subject}", caption, count=1)
    return with_subject if found else f"{placeholder}, {caption}"


class OnePersonDataModule(IdentityVideoDataModule):
    def __init__(self, identity: str, placeholder: str = "<id>", subject: str = "person", **kwargs):
        super().__init__(**kwargs)
        self.identity, self.placeholder, self.subject = identity, placeholder, subject

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        if self.manifest is None:
            from idvid.demo import build_demo

            source = build_demo()
        else:
            source = Path(self.manifest)
        entries = read_manifest(source)  # paths made absolute
        chosen = [e for e in entries if e["identity"] == self.identity]
        if not chosen:
            identities = sorted({e["identity"] for e in entries})
            raise ConfigError(
                f"data.identity={self.identity!r} has no clips in {source}.",
                f"Choose one of its identities: {', '.join(identities)}.",
            )
        lines = [
            json.dumps({**e, "caption": placeholder_caption(e["caption"], self.placeholder, self.subject)})
            for e in chosen
        ]
        text = "\n".join(lines) + "\n"
        # A derived manifest beside nothing of the user's: named by its content, so reruns reuse it.
        folder = Path(tempfile.gettempdir()) / "idvid-one-person"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
        if not path.is_file():
            partial = path.with_suffix(f".{os.getpid()}.partial")  # parallel test workers may race here
            partial.write_text(text)
            partial.replace(path)
        self.manifest_path = path
        self.manifest, saved = str(path), self.manifest
        try:
            super().setup(stage)
        finally:
            self.manifest = saved


__all__ = ["OnePersonDataModule", "placeholder_caption"]
