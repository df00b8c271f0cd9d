"""A server interceptor that times every RPC, logs one line for it and counts it (see `observability`),
and sends the server version as initial metadata (`x-flightline-version`) on every response.

It goes first in the interceptor list, outside `ErrorInterceptor`, so it sees the status code that
interceptor set. It logs the method, the status code, the duration and the request's workspace id;
never a request's other fields (they hold tokens and model bytes)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from flightline import __version__
from flightline.server.observability import VERSION_HEADER, Observer

_METADATA = ((VERSION_HEADER, __version__),)


def workspace_of(message: Any) -> int | None:
    """The workspace id a request names: its own `workspace_id`, or that of a message field set in it
    (an upload's first message carries it in `metadata`). None when it names none."""
    found = _own_workspace(message)
    if found is not None or not hasattr(message, "ListFields"):
        return found
    for field, value in message.ListFields():
        if field.message_type is not None and not _repeated(field):
            found = _own_workspace(value)
            if found is not None:
                return found
    return None


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _own_workspace(message: Any) -> int | None:
    descriptor = getattr(message, "DESCRIPTOR", None)
    field = descriptor.fields_by_name.get("workspace_id") if descriptor is not None else None
    if field is None or _repeated(field):
        return None
    if field.has_presence:  # proto3 `optional`: set means named, even as 0
        return int(message.workspace_id) if message.HasField("workspace_id") else None
    return int(message.workspace_id) or None  # plain int64: 0 is "not given"


class ObserveInterceptor(grpc.ServerInterceptor):
    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED; nothing to label it with
            return None
        method = str(details.method).lstrip("/")
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary, streamed=False))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._unary(method, handler.unary_stream, streamed=True))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._stream(method, handler.stream_unary, streamed=False))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._stream(method, handler.stream_stream, streamed=True))
        return handler

    def _unary(self, method: str, behavior: Callable[..., Any], *, streamed: bool) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            return self._run(method, behavior, request, context, workspace_of(request), streamed)

        return observed

    def _stream(self, method: str, behavior: Callable[..., Any], *, streamed: bool) -> Callable[..., Any]:
        def observed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            seen: list[int | None] = [None]

            def peeked() -> Iterator[Any]:
                first = True
                for request in requests:
                    if first:
                        seen[0] = workspace_of(request)
                        first = False
                    yield request

            return self._run(method, behavior, peeked(), context, seen, streamed)

        return observed

    def _run(
        self,
        method: str,
        behavior: Callable[..., Any],
        request: Any,
        context: grpc.ServicerContext,
        workspace: int | list[int | None] | None,
        streamed: bool,
    ) -> Any:
        started = time.monotonic()
        if streamed:  # a response stream ends later: observe it when it does
            return self._responses(method, behavior, request, context, started, workspace)
        try:
            context.send_initial_metadata(_METADATA)  # raises if the client is gone already
            response = behavior(request, context)
        except BaseException:
            self._done(method, context, started, workspace, failed=True)
            raise
        self._done(method, context, started, workspace, failed=False)
        return response

    def _responses(
        self,
        method: str,
        behavior: Callable[..., Any],
        request: Any,
        context: grpc.ServicerContext,
        started: float,
        workspace: int | list[int | None] | None,
    ) -> Iterator[Any]:
        failed = True
        try:
            context.send_initial_metadata(_METADATA)
            yield from behavior(request, context)
            failed = False
        finally:  # also when the client goes away and grpc closes the generator
            self._done(method, context, started, workspace, failed=failed)

    def _done(
        self,
        method: str,
        context: grpc.ServicerContext,
        started: float,
        workspace: int | list[int | None] | None,
        *,
        failed: bool,
    ) -> None:
        code = context.code()  # set by abort() or set_code(); None means the handler left it at OK
        if isinstance(code, grpc.StatusCode):
            name = code.name
        elif not context.is_active():  # the client cancelled or its deadline passed; no status to send
            name = "CANCELLED"
        else:
            name = "UNKNOWN" if failed else "OK"
        workspace_id = workspace[0] if isinstance(workspace, list) else workspace
        self.observer.rpc(method, name, time.monotonic() - started, workspace_id)
