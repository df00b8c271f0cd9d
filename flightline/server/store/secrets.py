"""Secrets at rest: registry tokens and runtime servers' secrets are stored encrypted (Fernet: AES-128-CBC
with an HMAC-SHA256), never in clear, with a key from settings (`FLIGHTLINE_SECRET_KEY`) or, in local
mode, from `data_dir/secret-key` (created owner-only at the first start).

Stored values read `fernet:<token>`. Several keys may be given (newest first, comma-separated): values are
written with the first and read with any, which is how `flightline keys rotate` re-encrypts everything
with a new key without a moment where a value cannot be read."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX: Final = "fernet:"
KEY_FILE: Final = "secret-key"


class SecretsError(Exception):
    """A stored secret cannot be read with the configured keys (a wrong or rotated-away key)."""


class Secrets:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one secret key is needed")
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in keys])
        except ValueError as exc:
            raise ValueError(
                "a secret key must be 32 url-safe base64-encoded bytes (flightline keys generate)"
            ) from exc
        self.keys = tuple(k.strip() for k in keys)

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, clear: str) -> str:
        """The stored form of `clear`; "" stays "" (nothing to hide, and "no token" stays visible)."""
        return "" if not clear else PREFIX + self._fernet.encrypt(clear.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored:
            return ""
        if not stored.startswith(PREFIX):
            raise SecretsError("a stored secret is not encrypted")
        try:
            return self._fernet.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretsError(
                "a stored secret cannot be decrypted with the configured keys (servers sharing a database "
                "must share FLIGHTLINE_SECRET_KEY)"
            ) from None

    def is_current(self, stored: str) -> bool:
        """Whether `stored` is encrypted with the first key (what rotation leaves behind)."""
        if not stored.startswith(PREFIX):
            return not stored
        try:
            Fernet(self.keys[0].encode()).decrypt(stored.removeprefix(PREFIX).encode())
        except InvalidToken:
            return False
        return True


_process_secrets: Secrets | None = None
_process_lock = threading.Lock()


def process_secrets() -> Secrets:
    """A key of this process only: for stores opened without settings (tests, tools)."""
    global _process_secrets
    with _process_lock:
        if _process_secrets is None:
            _process_secrets = Secrets([Secrets.generate_key()])
        return _process_secrets


def load_keys(configured: str, data_dir: Path) -> list[str]:
    """The configured keys (comma-separated, newest first), else the key kept in `data_dir/secret-key`,
    created owner-only at the first start."""
    if configured.strip():
        return [k for k in (part.strip() for part in configured.split(",")) if k]
    path = data_dir / KEY_FILE
    if path.exists():
        return [k for k in path.read_text().split() if k]
    key = Secrets.generate_key()
    write_private(path, key + "\n")
    return [key]


def write_private(path: Path, text: str) -> None:
    """Writes `text` to `path` readable by its owner only, atomically (created 0600, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
