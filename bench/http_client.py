"""A keep-alive HTTP/1.1 client with Nagle off: one connection reused for every request."""

from __future__ import annotations

import http.client
import socket


class KeepAliveClient:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=120)
        self._connection.connect()
        assert self._connection.sock is not None
        self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post_json(self, path: str, body: bytes) -> bytes:
        self._connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} from {path}: {payload[:300]!r}")
        return payload

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
