"""Client of an MLflow model registry over its REST API.

Two kinds of registry speak the same registry API and differ only in where a version's files live:
- a self-hosted `mlflow server` serves them through its artifacts proxy (`mlflow-artifacts:/...` URIs,
  `/api/2.0/mlflow-artifacts/artifacts`), so the server must run with --serve-artifacts (its default);
- Azure Databricks keeps them on DBFS (`dbfs:/...` URIs), read in chunks of at most 1 MiB through
  `/api/2.0/dbfs/read`, and wants a personal access token as a Bearer token.

In MLflow 3 a version's `source` is often `models:/m-<id>` (a logged model), not a file location, so files are
always found through `model-versions/get-download-uri`, which resolves every kind of source.

Every request is bounded twice: by the client's own httpx timeouts (connect, read, write, pool), and by
the deadline of the call it serves (`flightline.server.calls`), so registry work ends when its caller's
deadline does. A registry's error bodies are logged, never put in an error message: they are remote text
that a caller could otherwise use to read services the server can reach.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

from flightline.server import calls
from flightline.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

_PROXY_API = "/api/2.0/mlflow-artifacts/artifacts"
_DBFS_READ_API = "/api/2.0/dbfs/read"
# DBFS refuses reads over 1 MiB (MAX_READ_SIZE_EXCEEDED).
_DBFS_MAX_READ = 1024 * 1024
_BACKOFF_SECONDS = 0.25
_BACKOFF_CAP_SECONDS = 4.0
# How much of a remote error body goes to the log: enough to diagnose, bounded against a flood.
_LOGGED_BODY_CHARS = 2000
_PATH_FORMS = (
    "models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id>, runs:/<run_id>/<path>, "
    "mlflow-artifacts:/<path>, "
    "dbfs:/<path>, /<dbfs path>, or a full_path URL of this registry"
)


@dataclass(frozen=True)
class RegisteredModelVersion:
    """One version of a registered model, as MLflow's ModelVersion. Timestamps in ms since the epoch."""

    name: str
    description: str
    version: str
    status: str
    run_id: str
    run_link: str
    source: str
    current_stage: str
    creation_timestamp: int
    last_updated_timestamp: int


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model with its latest version per stage. Timestamps in ms since the epoch."""

    name: str
    user_id: str
    description: str
    creation_timestamp: int
    last_updated_timestamp: int
    latest_versions: tuple[RegisteredModelVersion, ...]


@dataclass(frozen=True)
class ArtifactInfo:
    """A file or directory of a model version. `path` is what `download` takes; `full_path` reads the file."""

    file_size: int
    full_path: str
    is_dir: bool
    modification_time: int
    path: str


@dataclass(frozen=True)
class ModelReference:
    """What a `models:/` URI names, pinned to one immutable thing: a registered model's version (an alias
    resolved to the version it pointed at when asked) or an MLflow 3 logged model. `uri` downloads
    exactly that (`models:/<name>/<version>` or `models:/m-<id>`), however the alias moves later."""

    uri: str
    name: str = ""  # registered model name; "" for a logged model
    version: str = ""  # registered version; "" for a logged model
    alias: str = ""  # the alias that was resolved, if any
    model_id: str = ""  # m-<id>: an MLflow 3 logged model


@dataclass(frozen=True)
class _Entry:
    """A file or directory in an artifact store, named by the store's own path."""

    path: str
    is_dir: bool
    size: int
    mtime: int


class _Progress:
    """Reports bytes written so far over a whole download, files one after the other."""

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self._callback = callback
        self._finished = 0

    def written(self, in_current_file: int) -> None:
        if self._callback is not None:
            self._callback(self._finished + in_current_file)

    def file_done(self, size: int) -> None:
        self._finished += size


class _Http:
    """GETs against one registry: Bearer token, bounded retries with backoff, failures as domain errors."""

    def __init__(self, url: str, token: str, timeouts: httpx.Timeout, retries: int) -> None:
        self.url = url
        self._retries = retries
        self._timeouts = timeouts
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=url, headers=headers, timeout=timeouts)

    def close(self) -> None:
        self._client.close()

    def get_json(self, path: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        response = self.send(path, params, what)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Unavailable(
                f"registry at {self.url} did not answer {path} with MLflow JSON"
                f" (HTTP {response.status_code});"
                " check that the URL is the base URL of an MLflow server or Databricks workspace"
            )
        return body

    def send(
        self,
        path: str,
        params: dict[str, Any] | None,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Sends a GET, retrying connection failures, 429 and 5xx. A streamed response must be closed."""
        failure = ""
        for attempt in range(self._retries + 1):
            if attempt:
                self.pause(attempt)
            outcome = self.send_once(path, params, what, headers=headers, stream=stream)
            if isinstance(outcome, httpx.Response):
                return outcome
            failure = outcome
        raise Unavailable(
            f"registry at {self.url} is unreachable: {failure} (tried {self._retries + 1} times); "
            "check the URL and that the registry is running"
        )

    def send_once(
        self,
        path: str,
        params: dict[str, Any] | None,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response | str:
        """One GET: the response, or why it failed when a retry may succeed (connection failure, 429, 5xx).
        Raises the domain error of any other failed answer. A streamed response must be closed."""
        request = self._client.build_request(
            "GET", path, params=params, headers=headers, timeout=self.timeouts(f"asking for {what}")
        )
        try:
            response = self._client.send(request, stream=stream)
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code < 400:
            return response
        response.read()
        response.close()
        log.warning(
            "registry at %s answered HTTP %d for %s: %r",
            self.url,
            response.status_code,
            what,
            response.text[:_LOGGED_BODY_CHARS],
        )
        if response.status_code == 429 or response.status_code >= 500:
            return f"HTTP {response.status_code}"
        raise self._client_error(response, what)

    def timeouts(self, before: str) -> httpx.Timeout:
        """The client's timeouts, each cut to what is left of the calling RPC's deadline."""
        calls.check(before)
        left = calls.remaining()
        if left is None:
            return self._timeouts
        parts = (self._timeouts.connect, self._timeouts.read, self._timeouts.write, self._timeouts.pool)
        connect, read, write, pool = (left if t is None else min(t, left) for t in parts)
        return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)

    def pause(self, attempt: int) -> None:
        """Backs off before a retry, never past the calling RPC's deadline."""
        backoff = float(min(_BACKOFF_SECONDS * 2 ** (attempt - 1), _BACKOFF_CAP_SECONDS))
        left = calls.remaining()
        time.sleep(backoff if left is None else max(0.0, min(backoff, left)))
        calls.check("retrying the registry")

    @property
    def retries(self) -> int:
        return self._retries

    def _client_error(self, response: httpx.Response, what: str) -> Exception:
        # The status and what was asked for only; the body went to the log (see the module docstring).
        status = response.status_code
        if status in (401, 403):
            return Unauthenticated(
                f"registry at {self.url} refused the token (HTTP {status}); "
                "set a valid personal access token on the registry"
            )
        if _error_code(response) == "RESOURCE_DOES_NOT_EXIST":
            return NotFound(f"{what} not found in registry at {self.url} (HTTP {status})")
        if status == 404:
            return NotFound(
                f"{what} not found: {self.url} answered HTTP 404; check that it is the base URL "
                "of an MLflow server or Databricks workspace"
            )
        return InvalidArgument(f"registry at {self.url} rejected the request for {what} (HTTP {status})")


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error_code", "")) if isinstance(body, dict) else ""


class _Store(Protocol):
    """Where a registry keeps a version's files: the MLflow artifacts proxy or DBFS."""

    def child(self, parent: str, name: str) -> str: ...

    def stat(self, path: str) -> _Entry: ...

    def list_dir(self, path: str) -> list[_Entry]: ...

    def read(self, entry: _Entry, out: BinaryIO, progress: _Progress) -> None: ...

    def info(self, entry: _Entry) -> ArtifactInfo: ...


class _ProxyStore:
    """Files served by `mlflow server --serve-artifacts`; paths are relative to its artifact destination."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def child(self, parent: str, name: str) -> str:
        return f"{parent}/{name}" if parent else name

    def stat(self, path: str) -> _Entry:
        # The proxy lists a missing directory and a file alike (as nothing), so a path is found in its parent.
        name = posixpath.basename(path)
        for entry in self.list_dir(posixpath.dirname(path)):
            if posixpath.basename(entry.path) == name:
                return entry
        raise NotFound(f"artifact 'mlflow-artifacts:/{path}' not found in registry at {self._http.url}")

    def list_dir(self, path: str) -> list[_Entry]:
        body = self._http.get_json(
            _PROXY_API, {"path": path}, f"artifact directory 'mlflow-artifacts:/{path}'"
        )
        return [
            _Entry(
                path=self.child(path, _safe_name(str(item.get("path", "")), self._http.url)),
                is_dir=bool(item.get("is_dir", False)),
                size=int(item.get("file_size", 0) or 0),
                mtime=0,
            )
            for item in body.get("files", [])
        ]

    def read(self, entry: _Entry, out: BinaryIO, progress: _Progress) -> None:
        what = f"artifact 'mlflow-artifacts:/{entry.path}'"
        written, failure = 0, ""
        for attempt in range(self._http.retries + 1):
            if attempt:
                self._http.pause(attempt)
            # After a broken transfer, resume where it stopped rather than fetch the file again.
            # Identity encoding, so Range offsets count the bytes written.
            headers = {"Accept-Encoding": "identity"}
            if written:
                headers["Range"] = f"bytes={written}-"
            # One request per attempt: this loop is the retry loop (send() would retry inside it too).
            response = self._http.send_once(
                f"{_PROXY_API}/{quote(entry.path)}", None, what, headers=headers, stream=True
            )
            if isinstance(response, str):
                failure = response
                continue
            try:
                if written and response.status_code != 206:
                    out.seek(0)
                    out.truncate()
                    written = 0
                for chunk in response.iter_bytes():
                    calls.check(f"reading more of {what}")
                    out.write(chunk)
                    written += len(chunk)
                    progress.written(written)
                return
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            finally:
                response.close()
        raise Unavailable(
            f"registry at {self._http.url} is unreachable: reading {what} failed: {failure} "
            f"(tried {self._http.retries + 1} times)"
        )

    def info(self, entry: _Entry) -> ArtifactInfo:
        return ArtifactInfo(
            file_size=0 if entry.is_dir else entry.size,
            full_path=f"{self._http.url}{_PROXY_API}/{quote(entry.path)}",
            is_dir=entry.is_dir,
            modification_time=entry.mtime,
            path=f"mlflow-artifacts:/{entry.path}",
        )


class _DbfsStore:
    """Files on Databricks DBFS; paths are absolute DBFS paths such as /databricks/mlflow-registry/..."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def child(self, parent: str, name: str) -> str:
        return f"{parent.rstrip('/')}/{name}"

    def stat(self, path: str) -> _Entry:
        # DBFS lists a file as itself, so one call tells a file from a directory.
        entries = self.list_dir(path)
        if len(entries) == 1 and not entries[0].is_dir and entries[0].path == path:
            return entries[0]
        return _Entry(path=path, is_dir=True, size=0, mtime=0)

    def list_dir(self, path: str) -> list[_Entry]:
        body = self._http.get_json("/api/2.0/dbfs/list", {"path": path}, f"DBFS path '{path}'")
        entries = []
        for item in body.get("files", []):
            listed = str(item.get("path", "")).rstrip("/")
            name = _safe_name(posixpath.basename(listed), self._http.url)
            entries.append(
                _Entry(
                    path=path if listed == path else self.child(path, name),
                    is_dir=bool(item.get("is_dir", False)),
                    size=int(item.get("file_size", 0) or 0),
                    mtime=int(item.get("modification_time", 0) or 0),
                )
            )
        return entries

    def read(self, entry: _Entry, out: BinaryIO, progress: _Progress) -> None:
        what, offset = f"DBFS file '{entry.path}'", 0
        # Reads up to the listed size: DBFS answers past the end with an empty chunk, not an error.
        while offset < entry.size:
            params = {"path": entry.path, "offset": offset, "length": _DBFS_MAX_READ}
            body = self._http.get_json(_DBFS_READ_API, params, what)
            try:
                data = base64.b64decode(body.get("data", ""), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Unavailable(f"registry at {self._http.url} sent undecodable data for {what}") from exc
            if not data or len(data) != int(body.get("bytes_read", -1)):
                raise Unavailable(
                    f"registry at {self._http.url} sent a broken chunk of {what} at offset {offset} "
                    f"of {entry.size} bytes; the file may have changed, try again"
                )
            out.write(data)
            offset += len(data)
            progress.written(offset)

    def info(self, entry: _Entry) -> ArtifactInfo:
        return ArtifactInfo(
            file_size=0 if entry.is_dir else entry.size,
            full_path=f"{self._http.url}{_DBFS_READ_API}?path={quote(entry.path)}",
            is_dir=entry.is_dir,
            modification_time=entry.mtime,
            path=entry.path,
        )


def _safe_name(name: str, url: str) -> str:
    """A listed name must stay one path component, so nothing written from a listing can escape `dest`."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        log.warning("registry at %s listed an unsafe file name %r", url, name[:_LOGGED_BODY_CHARS])
        raise InvalidArgument(f"registry at {url} listed an unsafe file name; refusing to use it")
    return name


def _refuse_traversal(path: str, original: str) -> None:
    if ".." in path.replace("\\", "/").split("/"):
        raise InvalidArgument(f"path {original!r} contains '..'; pass a path from list_artifacts")


def _quoted_filter_value(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InvalidArgument(f"model name {value!r} holds both quote characters and cannot be searched for")


def _ms(value: Any) -> int:
    return int(value or 0)


def _version(item: dict[str, Any]) -> RegisteredModelVersion:
    return RegisteredModelVersion(
        name=str(item.get("name", "")),
        description=str(item.get("description") or ""),
        version=str(item.get("version", "")),
        status=str(item.get("status") or ""),
        run_id=str(item.get("run_id") or ""),
        run_link=str(item.get("run_link") or ""),
        source=str(item.get("source") or ""),
        current_stage=str(item.get("current_stage") or ""),
        creation_timestamp=_ms(item.get("creation_timestamp")),
        last_updated_timestamp=_ms(item.get("last_updated_timestamp")),
    )


def _model(item: dict[str, Any]) -> RegisteredModel:
    return RegisteredModel(
        name=str(item.get("name", "")),
        user_id=str(item.get("user_id") or ""),
        description=str(item.get("description") or ""),
        creation_timestamp=_ms(item.get("creation_timestamp")),
        last_updated_timestamp=_ms(item.get("last_updated_timestamp")),
        latest_versions=tuple(_version(v) for v in item.get("latest_versions") or ()),
    )


class MlflowRegistryClient:
    """Lists registered models, versions and version files of one registry, and downloads files to disk."""

    def __init__(
        self, url: str, token: str = "", *, timeout: float | httpx.Timeout = 30.0, retries: int = 3
    ) -> None:
        """`timeout` is an httpx.Timeout, or one number for every part of it but connect (at most 10 s)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"registry URL {url!r} is not an http(s) URL")
        if not isinstance(timeout, httpx.Timeout):
            if timeout <= 0:
                raise InvalidArgument("registry client needs a positive timeout")
            # A host that never answers should fail fast on connect, while a slow large read may take longer.
            timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        limits = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        if retries < 0 or any(t is None or t <= 0 for t in limits):
            raise InvalidArgument("registry client needs retries >= 0 and positive timeouts")
        self.url = url.rstrip("/")
        self._http = _Http(self.url, token, timeout, retries)
        self._proxy = _ProxyStore(self._http)
        self._dbfs = _DbfsStore(self._http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MlflowRegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def list_models(self, page_size: int = 100, page_token: str = "") -> tuple[list[RegisteredModel], str]:
        """One page of registered models, by name; the token is empty on the last page."""
        params = self._page_params(page_size, page_token)
        body = self._http.get_json("/api/2.0/mlflow/registered-models/search", params, "registered models")
        models = [_model(item) for item in body.get("registered_models", [])]
        return models, str(body.get("next_page_token") or "")

    def list_versions(
        self, name: str, page_size: int = 100, page_token: str = ""
    ) -> tuple[list[RegisteredModelVersion], str]:
        """One page of the versions of model `name`; NotFound when there is no such model."""
        if not name:
            raise InvalidArgument("model name is empty")
        params = {"filter": f"name={_quoted_filter_value(name)}", **self._page_params(page_size, page_token)}
        body = self._http.get_json(
            "/api/2.0/mlflow/model-versions/search", params, f"versions of model '{name}'"
        )
        versions = [_version(item) for item in body.get("model_versions", [])]
        if not versions and not page_token:
            # A search for an unknown model is just empty: tell "no such model" from "no versions yet".
            self._http.get_json("/api/2.0/mlflow/registered-models/get", {"name": name}, f"model '{name}'")
        return versions, str(body.get("next_page_token") or "")

    def list_artifacts(self, name: str, version: str) -> list[ArtifactInfo]:
        """Every file and directory of one model version, parents before children."""
        store, root = self._version_root(name, version)
        entries = list(self._walk(store, root))
        if not entries:
            raise NotFound(f"model '{name}' version {version} has no files in registry at {self.url}")
        return [store.info(entry) for entry in entries]

    def resolve_model(self, uri: str) -> ModelReference:
        """Pins a `models:/<name>/<version>`, `models:/<name>@<alias>` or `models:/m-<id>` URI to the
        version (or logged model) it names now; NotFound for an unknown alias, model or version."""
        _refuse_traversal(unquote(uri), uri)
        parts = urlsplit(uri)
        if parts.scheme != "models":
            raise InvalidArgument(f"{uri!r} is not a models:/ URI")
        ref = parts.path.strip("/")
        name, slash, version = ref.rpartition("/")
        if slash and name and version:
            return ModelReference(f"models:/{name}/{version}", name=name, version=version)
        name, at, alias = ref.rpartition("@")
        if at and name and alias:
            what = f"alias '{alias}' of model '{name}'"
            try:
                body = self._http.get_json(
                    "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias}, what
                )
            except InvalidArgument:  # MLflow answers an unknown alias with 400 INVALID_PARAMETER_VALUE
                raise NotFound(f"{what} not found in registry at {self.url}") from None
            version = str(body.get("model_version", {}).get("version", ""))
            if not version.isdigit():
                raise Unavailable(f"registry at {self.url} answered {what} without a version number")
            return ModelReference(f"models:/{name}/{version}", name=name, version=version, alias=alias)
        if ref.startswith("m-") and "/" not in ref:
            return ModelReference(f"models:/{ref}", model_id=ref)
        raise InvalidArgument(
            f"cannot resolve {uri!r}: expected models:/<name>/<version>, models:/<name>@<alias> "
            "or models:/m-<id>"
        )

    def download(self, path: str, dest: Path, progress: Callable[[int], None] | None = None) -> Path:
        """Downloads a file to dest/<basename>, or a directory to a tree under dest/<basename>/.

        `path` is a `path` or `full_path` from `list_artifacts`, a version's `source`, or
        models:/<name>/<version>. Data is streamed to a hidden staging name and renamed when complete,
        so a failed download leaves nothing behind. `progress` gets the bytes written so far.
        """
        store, location = self._resolve(path)
        base = posixpath.basename(location.rstrip("/"))
        if base in ("", ".", ".."):
            raise InvalidArgument(
                f"path {path!r} names no file or directory; pass a path from list_artifacts"
            )
        target = dest / base
        if target.exists():
            raise AlreadyExists(f"{target} already exists; download into an empty directory")
        dest.mkdir(parents=True, exist_ok=True)
        entry = store.stat(location)
        staging = dest / f".{base}.partial-{uuid.uuid4().hex}"
        try:
            if entry.is_dir:
                self._download_tree(store, entry, staging, _Progress(progress))
            else:
                self._download_file(store, entry, staging, _Progress(progress))
            os.replace(staging, target)
        except BaseException:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
            raise
        return target

    def _page_params(self, page_size: int, page_token: str) -> dict[str, Any]:
        if page_size < 1:
            raise InvalidArgument(f"page size must be at least 1, got {page_size}")
        return {"max_results": page_size, **({"page_token": page_token} if page_token else {})}

    def _version_root(self, name: str, version: str) -> tuple[_Store, str]:
        if not name or not version:
            raise InvalidArgument("model name and version are both required")
        what = f"model '{name}' version {version}"
        params = {"name": name, "version": version}
        body = self._http.get_json("/api/2.0/mlflow/model-versions/get-download-uri", params, what)
        uri = str(body.get("artifact_uri", ""))
        if uri.startswith("runs:/"):  # a version registered from a run's folder (create_model_version)
            return self._resolve(uri)
        return self._served_location(uri, what)

    def _served_location(self, uri: str, what: str) -> tuple[_Store, str]:
        """Maps an artifact URI that the registry reported to the store that serves it."""
        parts = urlsplit(uri)
        if parts.scheme == "mlflow-artifacts":
            return self._proxy, parts.path.strip("/")
        if parts.scheme == "dbfs":
            return self._dbfs, "/" + parts.path.strip("/")
        raise FailedPrecondition(
            f"{what} keeps its files at {uri!r}, which registry at {self.url} does not serve over HTTP; "
            "Flightline reads mlflow-artifacts:/ (an `mlflow server` with --serve-artifacts) and dbfs:/ "
            "(a Databricks workspace model registry) locations"
        )

    def _resolve(self, path: str) -> tuple[_Store, str]:
        """Maps any accepted form of `path` to a store and a location in it."""
        _refuse_traversal(unquote(path), path)
        parts = urlsplit(path)
        if parts.scheme == "models":
            return self._resolve_models_uri(path, parts.path.strip("/"))
        if parts.scheme == "runs":
            run_id, _, sub = parts.path.strip("/").partition("/")
            what = f"run '{run_id}'"
            run = self._http.get_json("/api/2.0/mlflow/runs/get", {"run_id": run_id}, what)
            store, root = self._served_location(
                str(run.get("run", {}).get("info", {}).get("artifact_uri", "")), what
            )
            return store, store.child(root, sub) if sub else root
        if parts.scheme in ("http", "https"):
            return self._resolve_url(path)
        if parts.scheme in ("mlflow-artifacts", "dbfs"):
            return self._served_location(path, f"artifact {path!r}")
        if not parts.scheme and path.startswith("/"):
            return self._dbfs, path.rstrip("/") or "/"
        raise InvalidArgument(f"cannot download {path!r}: expected {_PATH_FORMS}")

    def _resolve_models_uri(self, path: str, ref: str) -> tuple[_Store, str]:
        name, _, version = ref.rpartition("/")
        if name and version:
            return self._version_root(name, version)
        if "@" in ref:
            pinned = self.resolve_model(path)
            return self._version_root(pinned.name, pinned.version)
        if ref.startswith("m-"):
            what = f"logged model '{ref}'"
            body = self._http.get_json(f"/api/2.0/mlflow/logged-models/{quote(ref)}", {}, what)
            uri = str(body.get("model", {}).get("info", {}).get("artifact_uri", ""))
            return self._served_location(uri, what)
        raise InvalidArgument(
            f"cannot download {path!r}: expected models:/<name>/<version> or models:/m-<id>"
        )

    def _resolve_url(self, url: str) -> tuple[_Store, str]:
        # The token goes with every request, so only URLs of this very registry are followed.
        parts, base = urlsplit(url), urlsplit(self.url)
        base_path = base.path.rstrip("/")
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or not parts.path.startswith(
            base_path + "/"
        ):
            raise InvalidArgument(
                f"{url!r} is not a URL of registry at {self.url}; refusing to send it the token"
            )
        api_path = unquote(parts.path[len(base_path) :])
        if api_path.startswith(_PROXY_API + "/"):
            return self._proxy, api_path[len(_PROXY_API) + 1 :].strip("/")
        if api_path == _DBFS_READ_API:
            dbfs_path = parse_qs(parts.query).get("path", [""])[0]
            if dbfs_path.startswith("/"):
                return self._dbfs, dbfs_path.rstrip("/") or "/"
        raise InvalidArgument(f"cannot download {url!r}: expected {_PATH_FORMS}")

    def _walk(self, store: _Store, directory: str) -> Iterator[_Entry]:
        for entry in sorted(store.list_dir(directory), key=lambda e: e.path):
            yield entry
            if entry.is_dir:
                yield from self._walk(store, entry.path)

    def _download_tree(self, store: _Store, root: _Entry, staging: Path, progress: _Progress) -> None:
        staging.mkdir()
        prefix = root.path.rstrip("/") + "/"
        for entry in self._walk(store, root.path):
            # Each component was checked by _safe_name when listed, so the tree stays under staging.
            local = staging.joinpath(*entry.path[len(prefix) :].split("/"))
            if entry.is_dir:
                local.mkdir()
            else:
                self._download_file(store, entry, local, progress)

    def _download_file(self, store: _Store, entry: _Entry, local: Path, progress: _Progress) -> None:
        with open(local, "wb") as out:
            store.read(entry, out, progress)
            size = out.tell()
        if size != entry.size:
            raise Unavailable(
                f"registry at {self.url} sent {size} bytes of {store.info(entry).path} but lists "
                f"{entry.size}; the file changed or the transfer broke, try again"
            )
        progress.file_done(size)
