"""Content-addressed artifact store on any pyarrow filesystem: a local folder, file:// or s3://bucket/prefix.

Layout under the root: `sha256/<first two hex digits>/<full hex digest>` for stored artifacts, `tmp/` for
uploads in flight. An upload streams into a temporary object and is moved to its final name only once its
size and hash check out, so a reader never sees half an artifact and a failed upload leaves nothing.
Stored artifacts are never written again: in a local store their files are read-only (0444), and
callers that need a named or writable file copy it out (nothing links into the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from uuid import uuid4

import pyarrow as pa
import pyarrow.fs as pafs

from flightline.server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 1 << 20
# Temporary objects older than this are left over from a crash (uploads stream for minutes, not hours).
STALE_TEMP_S = 6 * 3600
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What a client hears when the store refuses a write (read-only, full, no permission): a server fault it
# cannot fix, so no path or OS detail; the operator finds those in the log.
UNWRITABLE = "the artifact store cannot be written; the operator has been told in the log"
READ_ONLY = 0o444


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int
    created: bool = True  # False when the same bytes were already stored


class ArtifactStore:
    def __init__(self, url: str) -> None:
        """`url` is a local folder path, or any URI `pyarrow.fs.FileSystem.from_uri` accepts."""
        if "://" in url:
            self._fs, root = pafs.FileSystem.from_uri(url)
        else:
            self._fs, root = pafs.LocalFileSystem(), str(Path(url).resolve())
        self._root = root.rstrip("/")
        self._is_local = isinstance(self._fs, pafs.LocalFileSystem)
        self._fs.create_dir(self._temp_dir, recursive=True)
        self._remove_stale_temps()

    def put(
        self, chunks: Iterable[bytes], *, expected_size: int | None = None, expected_sha256: str | None = None
    ) -> StoredArtifact:
        """Stores the concatenated chunks; the same bytes stored twice are kept once. Raises Unavailable
        when the store cannot be written."""
        source = _Source(chunks)
        try:
            return self._put(source, expected_size, expected_sha256)
        except OSError as exc:
            if source.failed:  # the bytes' source broke (a client went away), not the store
                raise
            log.error("artifact store %s cannot be written: %s", self._root, exc)
            raise Unavailable(UNWRITABLE) from exc

    def _put(
        self, chunks: Iterable[bytes], expected_size: int | None, expected_sha256: str | None
    ) -> StoredArtifact:
        if expected_sha256 is not None:
            expected_sha256 = _checked_sha256(expected_sha256)
        temp = f"{self._temp_dir}/{uuid4().hex}"
        try:
            digest = hashlib.sha256()
            size = 0
            with self._fs.open_output_stream(temp) as out:
                for chunk in chunks:
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise InvalidArgument(
                            f"upload too long: got more than the declared {expected_size} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if expected_size is not None and size < expected_size:
                raise InvalidArgument(f"upload truncated: got {size} of {expected_size} bytes")
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise InvalidArgument(
                    f"sha256 mismatch: declared {expected_sha256}, received bytes hash to {sha256}"
                )
            created = not self.exists(sha256)
            if not created:
                self._fs.delete_file(temp)
            else:
                final = self._path(sha256)
                self._fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
                self._fs.move(temp, final)
                if self._is_local:
                    os.chmod(final, READ_ONLY)
        except BaseException:
            self._delete_if_present(temp)
            raise
        return StoredArtifact(sha256=sha256, size=size, created=created)

    def put_file(self, path: Path) -> StoredArtifact:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            return self.put(iter(partial(file.read, COPY_CHUNK_BYTES), b""), expected_size=size)

    def exists(self, sha256: str) -> bool:
        return self._fs.get_file_info(self._path(sha256)).type is pafs.FileType.File

    def open(self, sha256: str) -> pa.NativeFile:
        """A seekable binary stream of the artifact; close it (or use it in a `with` block)."""
        if not self.exists(sha256):
            raise NotFound(f"artifact {sha256} does not exist")
        return self._fs.open_input_file(self._path(sha256))

    def local_path(self, sha256: str, cache_dir: Path) -> Path:
        """A local file with the artifact: the stored file itself for local stores, else a verified
        copy downloaded once into `cache_dir`."""
        sha256 = _checked_sha256(sha256)
        if self._is_local:
            if not self.exists(sha256):
                raise NotFound(f"artifact {sha256} does not exist")
            return Path(self._path(sha256))
        cached = cache_dir / sha256[:2] / sha256
        if cached.is_file():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=cached.parent, prefix=".download-")
        try:
            digest = hashlib.sha256()
            with self.open(sha256) as source, os.fdopen(fd, "wb") as target:
                while chunk := source.read(COPY_CHUNK_BYTES):
                    digest.update(chunk)
                    target.write(chunk)
            if digest.hexdigest() != sha256:
                raise FailedPrecondition(
                    f"artifact {sha256} is corrupt in the store: it hashes to {digest.hexdigest()}"
                )
            os.chmod(temp, READ_ONLY)
            os.replace(temp, cached)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return cached

    def delete(self, sha256: str) -> None:
        """Removes an artifact; removing one that is not there does nothing."""
        self._delete_if_present(self._path(sha256))

    @property
    def _temp_dir(self) -> str:
        return f"{self._root}/tmp"

    def _path(self, sha256: str) -> str:
        sha256 = _checked_sha256(sha256)
        return f"{self._root}/sha256/{sha256[:2]}/{sha256}"

    def _delete_if_present(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.delete_file(path)

    def clean_temps(self) -> None:
        """At start-up: a local store belongs to one server, so every temporary object in it is left
        over from a crash. A remote store may be shared by several servers: only stale ones go."""
        self._remove_stale_temps(0 if self._is_local else STALE_TEMP_S)

    def _remove_stale_temps(self, older_than_s: float = STALE_TEMP_S) -> None:
        cutoff = time.time() - older_than_s
        for info in self._fs.get_file_info(pafs.FileSelector(self._temp_dir, allow_not_found=True)):
            stale = info.mtime is not None and info.mtime.timestamp() <= cutoff
            if info.type is pafs.FileType.File and stale:
                self._delete_if_present(info.path)


class _Source(Iterator[bytes]):
    """Chunks to store, remembering whether an error came from them rather than from the store."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.failed = False

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise
        except BaseException:
            self.failed = True
            raise


def _checked_sha256(sha256: str) -> str:
    """The digest in lower case, as artifacts are named."""
    if not SHA256_HEX.fullmatch(sha256.lower()):
        raise InvalidArgument(f"not a sha256: {sha256!r} (expected 64 hex digits)")
    return sha256.lower()
