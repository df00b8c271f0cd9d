"""Typed errors of the Python client (`flightline.connect`): one class per status code a caller can act
on, raised for gRPC (control plane) and Arrow Flight (data plane) failures alike.

    try:
        fl.workspaces.get(7)
    except flightline.errors.NotFoundError as error:
        print(error.code, error.details)   # NOT_FOUND workspace 7 does not exist
"""

from __future__ import annotations

import re

import grpc
import pyarrow as pa
import pyarrow.flight as flight


class FlightlineError(Exception):
    """Base of every client error. `code` is the status name (e.g. "NOT_FOUND"), `details` the server's
    short message."""

    code = "UNKNOWN"

    def __init__(self, details: str, code: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.details


class InvalidArgumentError(FlightlineError):
    """The request is malformed: a bad name, schema, column, page token, ..."""

    code = "INVALID_ARGUMENT"


class NotFoundError(FlightlineError):
    """A workspace, registry, model, version or deployment does not exist."""

    code = "NOT_FOUND"


class AlreadyExistsError(FlightlineError):
    """A unique name is taken."""

    code = "ALREADY_EXISTS"


class FailedPreconditionError(FlightlineError):
    """The thing exists but is in the wrong state (e.g. deploying a version that is not READY)."""

    code = "FAILED_PRECONDITION"


class UnavailableError(FlightlineError):
    """The server (or a registry / runtime behind it) cannot be reached; retrying later may help."""

    code = "UNAVAILABLE"


class UnauthenticatedError(FlightlineError):
    """Missing or wrong credentials."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(FlightlineError):
    """The credentials do not allow this call."""

    code = "PERMISSION_DENIED"


class ResourceExhaustedError(FlightlineError):
    """The server is at a capacity limit; retrying later may help."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceededError(FlightlineError):
    """The call's deadline passed (or a wait timed out)."""

    code = "DEADLINE_EXCEEDED"


class InternalError(FlightlineError):
    """A server fault; the detail is in the server's log."""

    code = "INTERNAL"


_BY_CODE: dict[str, type[FlightlineError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnavailableError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        DeadlineExceededError,
        InternalError,
    )
}


def from_code(code: str, details: str) -> FlightlineError:
    """The typed error for a status code name; unknown codes give the base class carrying the code."""
    cls = _BY_CODE.get(code)
    return cls(details) if cls is not None else FlightlineError(details, code)


def from_grpc(error: grpc.RpcError) -> FlightlineError:
    """The typed error for a failed gRPC call."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name.lower()
    return from_code(code.name, details)


# pyarrow maps Flight status codes onto its own exception classes; the order matters (subclasses first).
_FLIGHT: tuple[tuple[type[BaseException], str], ...] = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightInternalError, "INTERNAL"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
    (pa.ArrowCapacityError, "RESOURCE_EXHAUSTED"),
    (pa.ArrowException, "UNKNOWN"),
)
# pyarrow wraps the server's message: "Flight returned <kind> error, with message: <msg>. Detail: ...".
_FLIGHT_MESSAGE = re.compile(r"with message: (?P<message>.*?)(?:\. gRPC client debug context:.*|$)", re.S)


def from_flight(error: BaseException) -> FlightlineError | None:
    """The typed error for a failed Flight call, or None when `error` is not a Flight/Arrow error."""
    for cls, code in _FLIGHT:
        if isinstance(error, cls):
            text = str(error)
            found = _FLIGHT_MESSAGE.search(text)
            message = (found.group("message") if found else text).strip()
            message = message.split(". Detail:")[0].strip()
            return from_code(code, message or code.lower())
    return None
