"""Zip archives in and out, refusing broken archives and entries that escape their folder."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from flightline.server.errors import InvalidArgument


def check_zip(path: Path) -> None:
    """Raises InvalidArgument for a broken archive or one with absolute or `..` entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise InvalidArgument(f"archive entry {name!r} escapes the archive folder")
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        raise InvalidArgument(f"{path.name} is not a readable zip archive: {exc}") from exc
    if bad is not None:
        raise InvalidArgument(f"archive entry {bad!r} is corrupt (CRC mismatch)")


def extract_zip(path: Path, dest: Path) -> Path:
    """Extracts a checked archive; a single top-level folder (zip -r name.zip name/) is unwrapped."""
    check_zip(path)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(dest)
    return unwrap(dest)


def unwrap(folder: Path) -> Path:
    """The model root of an extracted archive: its only top-level folder, if it has just one."""
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def zip_dir(folder: Path, dest: Path) -> Path:
    """Zips a folder deterministically (sorted entries, fixed times) so equal trees store once."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(file.relative_to(folder)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with file.open("rb") as src, archive.open(info, "w") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return dest
