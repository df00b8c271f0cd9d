"""A stand-in for the Azure Databricks REST calls the registry client makes (Databricks cannot run here).

It implements only what Databricks documents for these calls, on 127.0.0.1 in a thread:
- GET /api/2.0/mlflow/registered-models/search, registered-models/get, model-versions/search,
  model-versions/get-download-uri (answering dbfs:/databricks/mlflow-registry/<id>/models/<name>);
- GET /api/2.0/dbfs/list (absolute paths; a file lists as itself; RESOURCE_DOES_NOT_EXIST when missing);
- GET /api/2.0/dbfs/read with offset/length, base64 `data` and `bytes_read`, at most 1 MiB per read
  (MAX_READ_SIZE_EXCEEDED above), INVALID_PARAMETER_VALUE on a directory.
Every call needs `Authorization: Bearer <token>`; anything else gets 401.
"""

from __future__ import annotations

import base64
import contextlib
import json
import posixpath
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_READ = 1024 * 1024
MODIFICATION_TIME = 1_686_942_597_646
CREATION_TIME = 1_686_942_353_127


@dataclass
class DbfsRegistry:
    """What the stand-in serves: one registered model with one version whose files live on DBFS."""

    token: str
    model: str
    files: Mapping[str, bytes]  # file name relative to the version directory -> content
    user_id: str = "sample.user@example.com"
    registry_id: str = "9f38797c1dbf4e7eb229c4011f0f1f18"
    run_id: str = "abcdefg"
    # Set to answer get-download-uri with another location, e.g. a Unity Catalog abfss:// one.
    download_uri: str = ""
    # Counters and knobs the tests read and set; guarded by `lock`.
    reads: int = 0
    failures_to_inject: int = 0
    # Fault knobs: every answer waits `delay_s`; with `error_status`, every call answers that status with
    # `error_body` as it is (JSON or not), as a registry or a proxy in front of it might.
    delay_s: float = 0.0
    requests: int = 0  # every request, counted on arrival
    error_status: int = 0
    error_body: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version_dir(self) -> str:
        return f"/databricks/mlflow-registry/{self.registry_id}/models/{self.model}"

    @property
    def source(self) -> str:
        return f"dbfs:/databricks/mlflow-tracking/{self.run_id}/{self.run_id}/artifacts/model"

    def version_json(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "version": "1",
            "creation_timestamp": CREATION_TIME,
            "last_updated_timestamp": MODIFICATION_TIME,
            "user_id": self.user_id,
            "current_stage": "Production",
            "description": "",
            "source": self.source,
            "run_id": self.run_id,
            "status": "READY",
        }

    def model_json(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "creation_timestamp": CREATION_TIME,
            "last_updated_timestamp": MODIFICATION_TIME,
            "user_id": self.user_id,
            "latest_versions": [self.version_json()],
        }

    def dbfs_files(self) -> dict[str, bytes]:
        return {f"{self.version_dir}/{name}": data for name, data in self.files.items()}

    def dbfs_dirs(self) -> set[str]:
        dirs = set()
        for path in self.dbfs_files():
            parent = posixpath.dirname(path)
            while parent != "/":
                dirs.add(parent)
                parent = posixpath.dirname(parent)
        return dirs


class _Handler(BaseHTTPRequestHandler):
    registry: DbfsRegistry  # set on a per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        with self.registry.lock:
            self.registry.requests += 1
            inject = self.registry.failures_to_inject > 0
            if inject:
                self.registry.failures_to_inject -= 1
        if self.registry.delay_s:
            time.sleep(self.registry.delay_s)
        if inject:
            return self._send(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try again"})
        if self.registry.error_status:
            return self._send_raw(self.registry.error_status, self.registry.error_body.encode())
        if self.headers.get("Authorization") != f"Bearer {self.registry.token}":
            return self._send(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        routes = {
            "/api/2.0/mlflow/registered-models/search": self._search_models,
            "/api/2.0/mlflow/registered-models/get": self._get_model,
            "/api/2.0/mlflow/model-versions/search": self._search_versions,
            "/api/2.0/mlflow/model-versions/get-download-uri": self._download_uri,
            "/api/2.0/dbfs/list": self._list,
            "/api/2.0/dbfs/read": self._read,
        }
        route = routes.get(parts.path)
        if route is None:
            return self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no API {parts.path}"})
        status, body = route(query)
        self._send(status, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self._send_raw(status, json.dumps(body).encode())

    def _send_raw(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up; fine
            self.wfile.write(data)

    def _missing(self, what: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{what} does not exist."}

    def _search_models(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return 200, {"registered_models": [self.registry.model_json()]}

    def _get_model(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if query.get("name") != self.registry.model:
            return self._missing(f"RegisteredModel '{query.get('name')}'")
        return 200, {"registered_model": self.registry.model_json()}

    def _search_versions(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if query.get("filter") != f"name='{self.registry.model}'":
            return 200, {}
        return 200, {"model_versions": [self.registry.version_json()]}

    def _download_uri(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if (query.get("name"), query.get("version")) != (self.registry.model, "1"):
            return self._missing(f"ModelVersion {query.get('name')} {query.get('version')}")
        return 200, {"artifact_uri": self.registry.download_uri or f"dbfs:{self.registry.version_dir}"}

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        path = query.get("path", "").rstrip("/")
        files, dirs = self.registry.dbfs_files(), self.registry.dbfs_dirs()
        if path in files:
            return 200, {"files": [_file_info(path, files[path])]}
        if path not in dirs:
            return self._missing(f"No file or directory exists on path {path}.")
        children = [_file_info(p, data) for p, data in files.items() if posixpath.dirname(p) == path]
        children += [_dir_info(d) for d in dirs if posixpath.dirname(d) == path]
        return 200, {"files": children} if children else {}

    def _read(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        path = query.get("path", "")
        offset, length = int(query.get("offset", 0)), int(query.get("length", 524_288))
        if length > MAX_READ:
            return 400, {"error_code": "MAX_READ_SIZE_EXCEEDED", "message": f"length {length} > {MAX_READ}"}
        files = self.registry.dbfs_files()
        if path in self.registry.dbfs_dirs() or offset < 0 or length < 0:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"cannot read {path}"}
        if path not in files:
            return self._missing(f"No file or directory exists on path {path}.")
        with self.registry.lock:
            self.registry.reads += 1
        chunk = files[path][offset : offset + length]
        return 200, {"bytes_read": len(chunk), "data": base64.b64encode(chunk).decode()}


def _file_info(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "is_dir": False, "file_size": len(data), "modification_time": MODIFICATION_TIME}


def _dir_info(path: str) -> dict[str, Any]:
    return {"path": path, "is_dir": True, "file_size": 0, "modification_time": MODIFICATION_TIME}


@dataclass(frozen=True)
class DbfsServer:
    url: str
    port: int
    registry: DbfsRegistry


@contextlib.contextmanager
def dbfs_server(registry: DbfsRegistry) -> Iterator[DbfsServer]:
    """Serves `registry` on a free port of 127.0.0.1 until the block exits."""
    handler = type("DbfsHandler", (_Handler,), {"registry": registry})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="dbfs-stand-in", daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        yield DbfsServer(url=f"http://127.0.0.1:{port}", port=port, registry=registry)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
