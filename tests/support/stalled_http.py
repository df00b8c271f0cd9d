"""A stand-in for a registry that accepts connections and never answers (a hung service or a black-holing
proxy): it reads what it is sent and holds every connection open until the block exits."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Stalled:
    url: str
    accepted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def stalled_http() -> Iterator[Stalled]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.settimeout(0.05)
    stalled = Stalled(url=f"http://127.0.0.1:{listener.getsockname()[1]}")
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            with stalled.lock:
                stalled.accepted += 1

    thread = threading.Thread(target=accept, name="stalled-http", daemon=True)
    thread.start()
    try:
        yield stalled
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
