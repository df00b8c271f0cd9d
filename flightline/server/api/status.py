"""The one place where domain errors become gRPC status codes: a server interceptor wraps every handler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from flightline.runtimes.base import InvalidInput, ModelLoadError
from flightline.server import errors

log = logging.getLogger(__name__)

CODES: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_of(exc: Exception) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.INTERNAL


def _abort(behavior: Callable[..., Any], exc: Exception, context: grpc.ServicerContext) -> None:
    """Ends the call with the error's code (context.abort raises)."""
    code = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        # Unexpected errors may carry internals (SQL parameters, paths): log them, say little.
        log.exception("internal error in %s", getattr(behavior, "__name__", "handler"))
        context.abort(code, "internal error; see the server log")
    context.abort(code, str(exc) or type(exc).__name__)


def _guard(behavior: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            _abort(behavior, exc, context)

    return guarded


def _guard_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Server-streaming handlers return a generator: errors surface while it is iterated, so the
    guard must iterate it too (an error after some messages still ends the call with its code)."""

    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            _abort(behavior, exc, context)

    return guarded


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps `flightline.server.errors` (and runtime errors) to status codes with the error's message.
    The API has unary, client-streaming and server-streaming RPCs; those are the handlers it wraps."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        if handler.unary_unary:
            return handler._replace(unary_unary=_guard(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=_guard(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_guard_stream(handler.unary_stream))
        return handler
