"""Model archives (zips of a model folder) as runtimes and upload readers see them: one rule for where
the model's root is, whether the zip is read in place (names) or unpacked (folders).

The rule, as the guide's `zip -r name.zip name/` makes archives: the root is the archive's only
top-level folder when it has just one entry at the top, else the archive's top itself. The server checks
archives (`flightline.server.services.archives.check_zip`) before anything here reads them."""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from flightline.runtimes.base import ModelLoadError


def unwrap(folder: Path) -> Path:
    """The model root of an extracted archive: its only top-level folder, if it has just one entry."""
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def extract(path: Path, dest: Path) -> Path:
    """Extracts an archive the server has checked (no entry escapes `dest`) and returns its model root."""
    with zipfile.ZipFile(path) as archive:
        archive.extractall(dest)
    return unwrap(dest)


def root_prefix(names: list[str]) -> str:
    """`unwrap` on the entry names of an archive: "folder/" when everything is inside one top-level
    folder, else "" (the archive's top is the root)."""
    tops = {PurePosixPath(name.replace("\\", "/")).parts[0] for name in names if name.strip("/")}
    if len(tops) != 1:
        return ""
    (top,) = tops
    nested = any(name.replace("\\", "/").startswith(f"{top}/") for name in names)
    return f"{top}/" if nested else ""


def read_member(path: Path, name: str, limit: int) -> str | None:
    """The text of the entry `name` below the archive's model root, at most `limit` bytes; None when the
    archive has no such entry. ModelLoadError when it is larger or not UTF-8 text."""
    try:
        with zipfile.ZipFile(path) as archive:
            full = root_prefix(archive.namelist()) + name
            try:
                info = archive.getinfo(full)
            except KeyError:
                return None
            with archive.open(info) as member:
                data = member.read(limit + 1)  # the header's size may lie; the read may not
    except zipfile.BadZipFile as error:
        raise ModelLoadError(f"the archive is not a readable zip: {error}") from None
    if len(data) > limit:
        raise ModelLoadError(f"{name} in the archive is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{name} in the archive is not UTF-8 text") from None


@contextlib.contextmanager
def unpacked(artifact: Path) -> Iterator[Path]:
    """The model root of `artifact`: a folder the server unpacked already (what runtime servers get), or
    an archive file (what the preparation gets), extracted into a temporary folder for the duration."""
    if artifact.is_dir():
        yield artifact
        return
    if not zipfile.is_zipfile(artifact):
        raise ModelLoadError(f"{artifact.name} is not a zip archive")
    with tempfile.TemporaryDirectory(prefix="unpacked-") as folder:
        yield extract(artifact, Path(folder))
