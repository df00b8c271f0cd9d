"""The artifacts folder a runtime server reads: `<folder>/<sha256>`, a file or an unpacked archive folder.

Filled by the local backend from the artifact store before a model is loaded, atomically (a half-copied
artifact is never visible under its final name), once per sha256 for every runtime server sharing it.
Runtime servers run as the sandbox user, which must read these files and change none of them: a file is
hard-linked to the store's copy only when that copy is world-readable and writable by nobody but its
owner (the store keeps 0444 files owned by the server's user, so a sandbox user that is another user
cannot modify them through the link); anything else is copied and made 0444. Unpacked archives are
files the server wrote: 0444 files in 0755 folders."""

from __future__ import annotations

import os
import shutil
import stat
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
        # Traversable, not listable: a server opens the sha256 it was told, it cannot enumerate the rest.
        folder.parent.chmod(0o711)
        folder.chmod(0o711)

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
                _read_only_tree(tmp / sha256)
            else:
                _link_or_copy(source, tmp / sha256)
            try:
                (tmp / sha256).rename(dest)
            except OSError:  # a concurrent load of the same artifact got there first
                if not dest.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _link_or_copy(source: Path, target: Path) -> None:
    mode = os.stat(source).st_mode
    if mode & stat.S_IROTH and not mode & (stat.S_IWGRP | stat.S_IWOTH):
        try:  # same file system as the store: no copy of a large model
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)
    target.chmod(0o444)


def _read_only_tree(root: Path) -> None:
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o444)
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o755)
    root.chmod(0o755)
