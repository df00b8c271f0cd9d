"""Zip archives in and out, refusing broken archives and entries that escape their folder."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path, PurePosixPath

from flightline.runtimes.archives import extract
from flightline.server.errors import InvalidArgument


def check_zip(path: Path) -> None:
    """Raises InvalidArgument for a broken archive or one with absolute or `..` entries."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise InvalidArgument(f"archive entry {name!r} escapes the archive folder")
            for info in archive.infolist():
                _check_member(archive, info)
    except zipfile.BadZipFile as exc:
        raise InvalidArgument(f"{path.name} is not a readable zip archive: {exc}") from exc


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Reads one member through: a CRC mismatch, corrupt or truncated compressed data and an unsupported
    compression method are all the uploader's broken archive, named by the member."""
    try:
        with archive.open(info) as member:
            while member.read(1 << 20):
                pass
    except zipfile.BadZipFile as exc:
        reason = "CRC mismatch" if "CRC" in str(exc) else "unreadable"
        raise InvalidArgument(f"archive entry {info.filename!r} is corrupt ({reason})") from exc
    except (zlib.error, EOFError) as exc:
        raise InvalidArgument(f"archive entry {info.filename!r} is corrupt (bad compressed data)") from exc
    except (NotImplementedError, RuntimeError) as exc:  # zipfile's words for these two
        raise InvalidArgument(
            f"archive entry {info.filename!r} is encrypted or uses an unsupported compression"
        ) from exc


def extract_zip(path: Path, dest: Path) -> Path:
    """Extracts a checked archive and returns its model root (runtimes.archives: a single top-level
    folder, as `zip -r name.zip name/` makes, is unwrapped)."""
    check_zip(path)
    return extract(path, dest)


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
