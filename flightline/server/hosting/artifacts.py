"""The artifacts folder runtime servers read: `<folder>/<sha256>`, a file or an unpacked archive folder.

Filled by the local backend from the artifact store before a model is loaded, atomically (a half-copied
artifact is never visible under its final name), once per sha256 for every runtime server sharing it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from flightline.server.services.archives import extract_zip
from flightline.server.store.artifacts import ArtifactStore


class ArtifactFolder:
    def __init__(self, store: ArtifactStore, folder: Path, cache: Path) -> None:
        self.store = store
        self.folder = folder
        self.cache = cache  # downloads from a remote store
        folder.mkdir(parents=True, exist_ok=True)

    def place(self, sha256: str, *, unpack: bool) -> Path:
        """`<folder>/<sha256>`, filled from the store if it is not there yet."""
        dest = self.folder / sha256
        if dest.exists():
            return dest
        source = self.store.local_path(sha256, self.cache)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=".placing-"))
        try:
            if unpack:
                extract_zip(source, tmp / "x").rename(tmp / sha256)
            else:
                try:  # same file system as the store: no copy
                    os.link(source, tmp / sha256)
                except OSError:
                    shutil.copyfile(source, tmp / sha256)
            try:
                (tmp / sha256).rename(dest)
            except OSError:  # a concurrent load of the same artifact got there first
                if not dest.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest
