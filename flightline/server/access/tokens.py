"""API tokens: `flt.<id>.<secret>`, the id in clear (to find the row), the secret 32 random bytes shown
once at creation and stored only as a salted SHA-256.

Why SHA-256 and not a slow password hash: the secret is 256 random bits, not a password a person chose,
so no dictionary or brute force applies, and every call checks a token (a slow hash would cost each
call milliseconds). The salt keeps equal secrets (never expected) from having equal hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "flt"
_FORMAT = re.compile(r"flt\.([0-9a-f]{16})\.([A-Za-z0-9_-]{32,128})")


@dataclass(frozen=True)
class NewToken:
    id: str
    secret: str
    salt: bytes
    digest: bytes

    @property
    def text(self) -> str:
        return f"{PREFIX}.{self.id}.{self.secret}"


def new_token(text: str | None = None) -> NewToken:
    """A fresh token, or the given one (an operator's chosen bootstrap token) once its form is checked."""
    if text is None:
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    else:
        parsed = parse(text)
        if parsed is None:
            raise ValueError("a token reads flt.<16 hex digits>.<32 to 128 of A-Z a-z 0-9 _ ->")
        token_id, secret = parsed
    salt = secrets.token_bytes(16)
    return NewToken(token_id, secret, salt, digest(salt, secret))


def parse(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    found = _FORMAT.fullmatch(text)
    return None if found is None else (found.group(1), found.group(2))


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def matches(salt: bytes, stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(digest(salt, secret), stored)
