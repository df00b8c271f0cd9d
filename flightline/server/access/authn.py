"""The one authentication check of both planes: a gRPC interceptor (`api/auth.py`) and the Flight front
door's middleware (`dataplane/auth.py`) hand it the `authorization` header they received and get the
caller's `Identity` or `Unauthenticated`.

Accepted headers: `Bearer <token>`, and `Basic base64(<anything>:<token>)`, the form stock Flight clients
(Java, Go, C++, ADBC) send in the basic-token handshake; the front door answers that handshake with the
same token as a bearer header, which those clients then send on every call.

A verified token is remembered for `ttl` seconds (and never past its expiry), so a stream of calls costs
one store read per second per token; a revocation or a membership change made through this process
applies at once (`forget`), one made through another process within `ttl`."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from flightline.server.access import tokens
from flightline.server.access.roles import Role
from flightline.server.errors import AlreadyExists, Unauthenticated
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.secrets import write_private
from flightline.server.store.tables import utc_now

log = logging.getLogger(__name__)

HEADER: Final = "authorization"
ADMIN_TOKEN_FILE: Final = "admin-token"
ADMIN_USER: Final = "admin"
MISSING: Final = "missing credentials: send the header `authorization: Bearer <token>`"
INVALID: Final = "invalid token"


@dataclass(frozen=True)
class Identity:
    """Who calls: a user (or service account), its memberships, and the token it used."""

    user_id: int
    name: str
    admin: bool  # a platform administrator: admin of every workspace
    roles: Mapping[int, Role] = field(default_factory=dict)
    token_id: str = ""

    def role_in(self, workspace_id: int) -> Role | None:
        return Role.ADMIN if self.admin else self.roles.get(workspace_id)

    def workspaces(self) -> frozenset[int] | None:
        """The workspaces this caller is a member of; None for a platform admin (all of them)."""
        return None if self.admin else frozenset(self.roles)


_current: ContextVar[Identity | None] = ContextVar("flightline_identity", default=None)


@contextmanager
def bound(identity: Identity) -> Iterator[None]:
    token = _current.set(identity)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Identity | None:
    """The caller of the RPC this thread serves; None outside one."""
    return _current.get()


class Authenticator:
    def __init__(self, store: MetadataStore, *, ttl: float = 1.0) -> None:
        self.store = store
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Identity, float]] = {}

    def authenticate(self, header: str | None) -> Identity:
        """The caller named by an `authorization` header value; Unauthenticated otherwise."""
        return self.from_token(token_of(header))

    def from_token(self, text: str) -> Identity:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(text)
        if cached is not None and cached[1] > now:
            return cached[0]
        identity, expires_at = self._verify(text)
        valid_for = self.ttl
        if expires_at is not None:
            valid_for = min(valid_for, (expires_at - utc_now()).total_seconds())
        with self._lock:
            if len(self._cache) > 10_000:  # bounded: many distinct tokens just cost more reads
                self._cache.clear()
            self._cache[text] = (identity, now + valid_for)
        return identity

    def forget(self) -> None:
        """Drops what was remembered (after a revocation or a membership change)."""
        with self._lock:
            self._cache.clear()

    def _verify(self, text: str) -> tuple[Identity, datetime | None]:
        parsed = tokens.parse(text)
        if parsed is None:
            raise Unauthenticated(INVALID)
        token_id, secret = parsed
        stored = self.store.stored_token(token_id)
        if stored is None or not tokens.matches(stored.salt, stored.hash, secret):
            raise Unauthenticated(INVALID)
        if stored.token.revoked_at is not None:
            raise Unauthenticated("token revoked")
        expires_at = stored.token.expires_at
        if expires_at is not None and expires_at <= utc_now():
            raise Unauthenticated("token expired")
        roles = {ws: Role.parse(role) for ws, role in stored.roles.items()}
        user = stored.user
        return Identity(user.id, user.name, user.admin, roles, token_id), expires_at


def token_of(header: str | None) -> str:
    """The token in an `authorization` header value: `Bearer <token>` or `Basic base64(user:token)`."""
    if not header:
        raise Unauthenticated(MISSING)
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated(INVALID) from None
        return decoded.partition(":")[2]
    raise Unauthenticated(MISSING)


def bootstrap_admin(store: MetadataStore, data_dir: Path, token: str = "") -> Path | None:
    """At the first start (no user yet): a platform admin `admin` with one token, `token` when the
    operator chose it (FLIGHTLINE_BOOTSTRAP_TOKEN), else a fresh one, written to `data_dir/admin-token`
    readable by its owner only. The file's path, or None when users existed already."""
    if store.count_users() > 0:
        return None
    issued = tokens.new_token(token or None)
    try:
        user = store.create_user(ADMIN_USER, admin=True)
    except AlreadyExists:  # another instance on the same database got there first
        return None
    store.add_token(user.id, issued.id, "bootstrap", issued.salt, issued.digest)
    path = data_dir / ADMIN_TOKEN_FILE
    write_private(path, issued.text + "\n")
    log.info("created user %s; its token is in %s (readable by this user only)", ADMIN_USER, path)
    return path
