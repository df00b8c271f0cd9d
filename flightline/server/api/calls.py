"""Per-call plumbing for every handler: binds the call for the domain (`flightline.server.calls`) and
admits slow, remote-bound methods through a bounded slow lane.

Why a slow lane: a gRPC worker is held for the whole of a call. Registry listings and downloads wait on a
remote service, and uploads on a client's stream, for seconds to minutes; if they could take every worker,
health checks and cheap reads would queue behind them. The lane admits at most `capacity` such calls at
once, and the server's pool is larger than the lane, so the rest of the API always finds a worker. A slow
call that finds the lane full is refused at once with RESOURCE_EXHAUSTED and a retry hint (the message,
and gRPC's standard `grpc-retry-pushback-ms` trailer, honoured by clients with a retry policy) rather
than queued: a queued call would hold a worker while it waits, which is what the lane exists to prevent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import grpc

from flightline.server import calls
from flightline.server.errors import ResourceExhausted
from flightline.v1 import model_pb2, registry_pb2


def _methods(file: Any, service: str, *names: str) -> set[str]:
    # Looked up in the descriptors, so a renamed method fails at import rather than slip out of the lane.
    described = file.services_by_name[service]
    return {f"/{described.full_name}/{described.methods_by_name[name].name}" for name in names}


SLOW_METHODS = frozenset(
    _methods(
        registry_pb2.DESCRIPTOR,
        "RegistryService",
        "ListRegistryModels",
        "ListRegistryModelVersions",
        "ListModelVersionArtifacts",
    )
    | _methods(model_pb2.DESCRIPTOR, "ModelService", "UploadFromRegistry", "UploadModel")
)


class SlowLane:
    """At most `capacity` slow calls at once; more are refused, never queued."""

    def __init__(self, capacity: int, retry_after_s: float = 2.0) -> None:
        if capacity < 1:
            raise ValueError(f"slow lane capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @contextmanager
    def admit(self, context: grpc.ServicerContext) -> Iterator[None]:
        with self._lock:
            admitted = self._in_use < self.capacity
            if admitted:
                self._in_use += 1
        if not admitted:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(int(self.retry_after_s * 1000))),))
            raise ResourceExhausted(
                f"the server is busy with {self.capacity} slow calls (registry transfers, uploads); "
                f"retry in about {self.retry_after_s:g} s"
            )
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1


class CallInterceptor(grpc.ServerInterceptor):
    """Binds every unary and client-streaming call for the domain, and admits SLOW_METHODS through the lane.
    It sits inside ErrorInterceptor, so the errors it raises get their status codes there."""

    def __init__(self, lane: SlowLane, slow_methods: frozenset[str] = SLOW_METHODS) -> None:
        self.lane = lane
        self.slow_methods = slow_methods

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        slow = details.method in self.slow_methods
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary, slow))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap(handler.stream_unary, slow))
        return handler

    def _wrap(self, behavior: Callable[..., Any], slow: bool) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with calls.bound(context), self.lane.admit(context) if slow else nullcontext():
                return behavior(request, context)

        run.__name__ = getattr(behavior, "__name__", "handler")
        return run
