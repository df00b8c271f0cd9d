"""The client call a piece of work serves: its deadline, and whether the client is still there.

The gRPC layer binds each call for the duration of its handler (`flightline.server.api.calls`); the domain
asks at the few points where outliving the caller would do harm:
- before committing a write (`MetadataStore`), so a write whose client has gone is rolled back;
- when sizing a remote request and between transfer chunks (the registry client), so registry work ends
  when the client's deadline does.
A context variable carries the call so every layer sees the same one without each signature growing a
parameter. Pool threads do not inherit it: work the server deliberately runs after the RPC returned
(preparation, deployment start) is bound by no client deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from flightline.server.errors import Cancelled, DeadlineExceeded


class Call(Protocol):
    """What the domain needs of a call; `grpc.ServicerContext` is one."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...


_current: ContextVar[Call | None] = ContextVar("flightline_call", default=None)


@contextmanager
def bound(call: Call) -> Iterator[None]:
    """Makes `call` the current call of this thread for the block."""
    token = _current.set(call)
    try:
        yield
    finally:
        _current.reset(token)


def remaining() -> float | None:
    """Seconds left before the current call's deadline; None outside a call or for a call without one."""
    call = _current.get()
    return None if call is None else call.time_remaining()


def check(before: str) -> None:
    """Raises DeadlineExceeded or Cancelled when the current call's client can no longer get the outcome
    of what comes next (`before`, e.g. "committing"). Outside a call it does nothing."""
    call = _current.get()
    if call is None:
        return
    left = call.time_remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded(f"the deadline passed before {before}; nothing was changed")
    if not call.is_active():
        raise Cancelled(f"the client cancelled the call before {before}; nothing was changed")
