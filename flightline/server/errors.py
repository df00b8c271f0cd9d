"""Domain errors. Each maps to one gRPC status code, in one place: `flightline.server.api.status`."""

from __future__ import annotations


class FlightlineError(Exception):
    """Base of all errors a client should see with their message."""


class InvalidArgument(FlightlineError):
    """The request is malformed: a bad name, schema, framework, ..."""


class NotFound(FlightlineError):
    """A named thing (workspace, registry, model, path, deployment) does not exist."""


class AlreadyExists(FlightlineError):
    """A unique name is taken."""


class Unauthenticated(FlightlineError):
    """A registry (or a client) presented missing or wrong credentials."""


class PermissionDenied(FlightlineError):
    """The caller is a member of the workspace but its role is too low. (A caller who is no member at all
    gets NotFound, so the ids of other workspaces' resources do not leak.)"""


class Unavailable(FlightlineError):
    """A dependency (registry, runtime) cannot be reached; retrying later may help."""


class FailedPrecondition(FlightlineError):
    """The thing exists but is in the wrong state, e.g. deploying a model version that is not READY."""


class ResourceExhausted(FlightlineError):
    """The server is at a capacity limit (e.g. its slow lane is full); retrying later may help."""


class DeadlineExceeded(FlightlineError):
    """The calling client's deadline passed; the work stopped and nothing was changed."""


class Cancelled(FlightlineError):
    """The calling client cancelled (or went away); the work stopped and nothing was changed."""
