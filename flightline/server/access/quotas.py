"""Limits per caller (per user): how many uploads and how many streams (Watch streams on gRPC,
exchanges at the Flight front door) one caller may have open at once. Past them a call is refused at
once with RESOURCE_EXHAUSTED, so one team cannot take every worker or connection of a shared server.
Sizes of single requests are bounded for every caller by `Settings.max_request_bytes` (gRPC's receive
limit)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from flightline.server.access.authn import Identity
from flightline.server.errors import ResourceExhausted


class CallerLimits:
    def __init__(self, uploads: int = 4, streams: int = 64) -> None:
        if uploads < 1 or streams < 1:
            raise ValueError("per-caller limits must be at least 1")
        self.uploads = uploads
        self.streams = streams
        self._lock = threading.Lock()
        self._open: Counter[tuple[str, int]] = Counter()

    def upload(self, identity: Identity, counted: bool = True) -> AbstractContextManager[None]:
        return self._hold("uploads", identity, self.uploads) if counted else nullcontext()

    def stream(self, identity: Identity) -> AbstractContextManager[None]:
        return self._hold("streams", identity, self.streams)

    @contextmanager
    def _hold(self, kind: str, identity: Identity, limit: int) -> Iterator[None]:
        key = (kind, identity.user_id)
        with self._lock:
            admitted = self._open[key] < limit
            if admitted:
                self._open[key] += 1
        if not admitted:
            raise ResourceExhausted(
                f"{identity.name} has {limit} {kind} open, the most one caller may have at once; "
                "retry when one has ended"
            )
        try:
            yield
        finally:
            with self._lock:
                self._open[key] -= 1
                if self._open[key] <= 0:
                    del self._open[key]
