"""Flight side of access control: a server middleware reads the `authorization` header of every call
and hands it to the same check as the gRPC interceptor (`access.authn.Authenticator`).

Stock Flight clients (Java, Go, C++, ADBC, pyarrow's `authenticate_basic_token`) log in with the
basic-token handshake: a Handshake call carrying `authorization: Basic base64(<user>:<token>)`. The user
part is not checked (the token names its user); the answer carries `authorization: Bearer <token>`,
which those clients send on every later call."""

from __future__ import annotations

import logging
from typing import Any, Final

import pyarrow.flight as flight

from flightline.server.access.authn import HEADER, Authenticator, Identity, token_of
from flightline.server.errors import Unauthenticated

log = logging.getLogger(__name__)

KEY: Final = "auth"  # the middleware's key: context.get_middleware(KEY)


class AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, identity: Identity | None, answer: str | None = None) -> None:
        super().__init__()
        self.identity = identity  # None: the call carried no credentials
        self._answer = answer

    def sending_headers(self) -> dict[str, str]:
        # Only the handshake's answer: a basic-token login gets its bearer header back.
        return {HEADER: f"Bearer {self._answer}"} if self._answer else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator) -> None:
        super().__init__()
        self.authenticator = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> AuthMiddleware:
        values = headers.get(HEADER)
        if not values:  # refused by the handler unless the call is open (health checks)
            return AuthMiddleware(None)
        value = values[0] if isinstance(values[0], str) else bytes(values[0]).decode(errors="replace")
        try:
            identity = self.authenticator.authenticate(value)
        except Unauthenticated as exc:
            raise flight.FlightUnauthenticatedError(str(exc)) from None
        except Exception:  # the store failed: say little, log the rest
            log.exception("authenticating a Flight call failed")
            raise flight.FlightUnavailableError("cannot check credentials now; retry") from None
        basic = value.strip().lower().startswith("basic ")
        return AuthMiddleware(identity, token_of(value) if basic else None)


class HandshakeOnly(flight.ServerAuthHandler):  # type: ignore[misc]
    """Lets the Handshake call through (without an auth handler Flight answers it UNIMPLEMENTED); the
    middleware has checked its basic credentials and answers with the bearer header. Nothing else is
    checked here: `is_valid` accepts every call, which the middleware has already judged."""

    def authenticate(self, outgoing: Any, incoming: Any) -> None:
        pass

    def is_valid(self, token: bytes) -> str:
        return ""  # pyarrow wants a str (the peer identity), not None


def caller(context: flight.ServerCallContext) -> Identity:
    """The caller of a Flight call; FlightUnauthenticatedError when it sent no credentials."""
    middleware = context.get_middleware(KEY)
    identity: Identity | None = middleware.identity if isinstance(middleware, AuthMiddleware) else None
    if identity is None:
        raise flight.FlightUnauthenticatedError(
            "missing credentials: send `authorization: Bearer <token>`, or log in with the basic-token "
            "handshake (user: anything, password: the token)"
        )
    return identity
