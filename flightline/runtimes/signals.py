"""Stopping a process on SIGTERM or SIGINT, shared by `flightline serve` and the runtime servers."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Final

# How long a signal may wait for its handler to run.
POLL_SECONDS: Final = 0.2


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT. Call from the main thread (Python's rule for handlers)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A blocked mask survives exec (and the threads of gRPC and Arrow block every signal): unblock, or a
    # parent's blocked SIGTERM would stay pending forever.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    return stop


def wait_for_stop(stop: threading.Event) -> None:
    """Blocks the main thread until `stop` is set, waking to let a signal's handler run.

    Python runs handlers in the main thread only, between bytecodes. The kernel hands a process's signal to
    any thread that does not block it, and threads started after `stop_on_signals` do not; when it picks
    one of them, an untimed wait in the main thread is never interrupted and the handler never runs (a
    SIGTERM then went unanswered, about one time in two)."""
    while not stop.wait(POLL_SECONDS):
        pass
