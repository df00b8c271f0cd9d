"""Child processes that must not outlive the control plane: the parent holds the write end of the
child's stdin and never writes, so end of stdin means the parent closed it or died (even by SIGKILL,
when no cleanup code runs). Used by the preparation process (`prepare.py --exit-with-stdin`)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

# The flag of a child that exits at the end of its stdin.
EXIT_WITH_STDIN = "--exit-with-stdin"


def on_end_of_stdin(callback: Callable[[], None]) -> None:
    """Calls `callback` from a daemon thread once stdin (fd 0) reaches its end."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # fd 0, not sys.stdin: that is None when started without one
                pass
        callback()

    threading.Thread(target=watch, daemon=True, name="stdin-watch").start()
