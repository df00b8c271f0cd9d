"""Watches that a server keeps answering while a fault test runs: gRPC health checks and a cheap read
(GetWorkspace), over their own channel, every few milliseconds, each with a 1 s deadline."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flightline.v1 import workspace_pb2, workspace_pb2_grpc
from support import auth

BOUND_S = 1.0


@dataclass
class Watch:
    checks: int = 0
    worst_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def assert_responsive(self) -> None:
        assert self.checks > 0, "the watch made no checks"
        assert not self.failures, self.failures[:3]
        assert self.worst_s < BOUND_S, f"slowest answer took {self.worst_s:.2f} s"


@contextlib.contextmanager
def responsive(address: str, workspace_id: int, interval: float = 0.05) -> Iterator[Watch]:
    """Yields a Watch that keeps checking until the block exits; call assert_responsive() after it."""
    watch, stop = Watch(), threading.Event()
    channel = auth.channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    workspaces = workspace_pb2_grpc.WorkspaceServiceStub(channel)

    def probe() -> None:
        while not stop.is_set():
            for name, call in (
                ("health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=BOUND_S)),
                (
                    "GetWorkspace",
                    lambda: workspaces.GetWorkspace(
                        workspace_pb2.GetWorkspaceRequest(workspace_id=workspace_id), timeout=BOUND_S
                    ),
                ),
            ):
                started = time.monotonic()
                try:
                    call()
                except grpc.RpcError as exc:
                    watch.failures.append(f"{name}: {exc.code()} {exc.details()}")
                watch.worst_s = max(watch.worst_s, time.monotonic() - started)
                watch.checks += 1
            stop.wait(interval)

    thread = threading.Thread(target=probe, name="health-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=5)
        channel.close()
