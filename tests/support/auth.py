"""Credentials for tests that talk to servers below the clients: raw gRPC channels and stubs, raw
pyarrow Flight clients. Every test server is started with TEST_TOKEN as its admin's bootstrap token
(conftest sets FLIGHTLINE_BOOTSTRAP_TOKEN and FLIGHTLINE_TOKEN), so these carry it by default."""

from __future__ import annotations

import os
from typing import Any, Final

import grpc
import pyarrow.flight as flight

from flightline.runtimes.flight_service import HeadersFactory
from flightline.transport import open_channel

# A token in the server's form (flt.<16 hex>.<secret>); only ever valid on test servers.
TEST_TOKEN: Final = "flt.0000000000000001.test-admin-token-of-the-flightline-test-suite"


def token() -> str:
    return os.environ.get("FLIGHTLINE_TOKEN") or TEST_TOKEN


def metadata(given: str | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata: `stub.Method(request, metadata=metadata())`."""
    return (("authorization", f"Bearer {given or token()}"),)


def channel(address: str, given: str | None = None) -> grpc.Channel:
    """A channel to `address` whose every call carries the token."""
    return open_channel(address, given or token())


def headers(given: str | None = None) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {given or token()}".encode())]


def call_options(given: str | None = None, **kwargs: Any) -> flight.FlightCallOptions:
    """Flight call options carrying the token: `client.do_exchange(descriptor, options=call_options())`."""
    return flight.FlightCallOptions(headers=headers(given), **kwargs)


def flight_connect(location: str, given: str | None = None, **kwargs: Any) -> flight.FlightClient:
    """A Flight client whose every call carries the token (a client middleware adds the header)."""
    factory = HeadersFactory({"authorization": f"Bearer {given or token()}"})
    return flight.connect(location, middleware=[factory, *kwargs.pop("middleware", [])], **kwargs)
