"""The one place where domain errors become gRPC status codes: a server interceptor wraps every handler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from flightline.runtimes.base import InvalidInput, ModelLoadError
from flightline.server import errors
from flightline.server.api import limits

log = logging.getLogger(__name__)

CODES: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_of(exc: Exception) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.INTERNAL


def _checked(requests: Iterator[Any]) -> Iterator[Any]:
    """A client stream whose every message passes `limits.check` before the handler sees it."""
    for request in requests:
        limits.check(request)
        yield request


def _abort(behavior: Callable[..., Any], exc: Exception, context: grpc.ServicerContext) -> None:
    """Ends the call with the error's code (context.abort raises)."""
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        # Unexpected errors may carry internals (SQL parameters, paths): log them, say little.
        log.exception("internal error in %s", getattr(behavior, "__name__", "handler"))
        context.abort(code, "internal error; see the server log")
    context.abort(code, str(exc) or type(exc).__name__)


def _guard(behavior: Callable[..., Any], *, streaming: bool = False) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if streaming:
                request = _checked(request)
            else:
                limits.check(request)
            return behavior(request, context)
        except Exception as exc:
            _abort(behavior, exc, context)

    return guarded


def _guard_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Server-streaming handlers return a generator: errors surface while it is iterated, so the
    guard must iterate it too (an error after some messages still ends the call with its code)."""

    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            limits.check(request)
            yield from behavior(request, context)
        except Exception as exc:
            _abort(behavior, exc, context)

    return guarded


class ErrorInterceptor(grpc.ServerInterceptor):
    """Checks every request message against `limits` and maps `flightline.server.errors` (and runtime
    errors) to status codes with the error's message. It wraps the unary, client-streaming and
    server-streaming handlers the API has."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        # A request that does not parse reaches the guard (as limits.Undecodable), to be refused there.
        method = str(details.method).rpartition("/")[2]
        lenient = limits.lenient(handler.request_deserializer, method)
        if handler.unary_unary:
            return handler._replace(unary_unary=_guard(handler.unary_unary), request_deserializer=lenient)
        if handler.stream_unary:
            return handler._replace(
                stream_unary=_guard(handler.stream_unary, streaming=True), request_deserializer=lenient
            )
        if handler.unary_stream:
            return handler._replace(
                unary_stream=_guard_stream(handler.unary_stream), request_deserializer=lenient
            )
        return handler
