"""Change notification for Watch streams: services bump a counter when they change a model version or
a deployment, and watchers wait on it instead of polling the store in a tight loop. Another server
instance sharing the store cannot notify this one, so a watcher also re-reads the store every
`poll_s` seconds; that slow poll is the only polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import TypeVar

from flightline.server.errors import Unavailable

T = TypeVar("T")

# A watch ends after this long even without a terminal state: streams must not pin a worker forever.
WATCH_LIFETIME_S = 600.0
# How often a watcher re-reads the store, to see changes made by another instance.
POLL_S = 1.0
# Each open watch holds one of the gRPC server's 16 worker threads; at most half of them may watch so
# that unary calls (health checks, reads, uploads) always find a thread.
MAX_WATCHES = 8


class Changes:
    def __init__(self, max_watches: int = MAX_WATCHES) -> None:
        self._condition = threading.Condition()
        self._sequence = 0
        self._watches = threading.BoundedSemaphore(max_watches)

    def notify(self) -> None:
        """Something changed: wake every watcher (each re-reads its own record)."""
        with self._condition:
            self._sequence += 1
            self._condition.notify_all()

    def watch(
        self,
        read: Callable[[], T],
        state: Callable[[T], Hashable],
        terminal: Callable[[T], bool],
        *,
        active: Callable[[], bool],
        lifetime_s: float = WATCH_LIFETIME_S,
        poll_s: float = POLL_S,
    ) -> Iterator[T]:
        """Yields read() now, then each time state(read()) changes, and ends after a terminal record,
        after `lifetime_s`, or once `active()` is false (the client went away)."""
        first = read()  # before taking a slot, so an unknown name is NOT_FOUND, not UNAVAILABLE
        if not self._watches.acquire(blocking=False):
            raise Unavailable("too many watches are open; retry later or poll the Get method")
        try:
            deadline = time.monotonic() + lifetime_s
            with self._condition:
                seen = self._sequence
            current, last = first, state(first)
            yield current
            while not terminal(current) and active():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                with self._condition:
                    if self._sequence == seen:  # else a change came while we were reading
                        self._condition.wait(min(poll_s, remaining))
                    seen = self._sequence
                current = read()
                if state(current) != last:
                    last = state(current)
                    yield current
        finally:
            self._watches.release()
