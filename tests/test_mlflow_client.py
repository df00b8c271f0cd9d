"""MlflowRegistryClient against a real `mlflow server` and against a Databricks DBFS stand-in."""

from __future__ import annotations

import contextlib
import pickle
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import mlflow.artifacts
import numpy as np
import pytest
from support.dbfs_server import DbfsRegistry, DbfsServer, dbfs_server
from support.mlflow_server import (
    HELPER_FILE,
    HELPER_SOURCE,
    RUN_NOTE,
    RUN_NOTE_TEXT,
    Populated,
)

from flightline.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from flightline.server.registries.mlflow import ArtifactInfo, MlflowRegistryClient

# `mlflow_registry` (conftest.py): a session-wide real `mlflow server` and what populate() logged in it.


@pytest.fixture
def registry(mlflow_registry: tuple[str, dict[str, object]]) -> Iterator[MlflowRegistryClient]:
    with MlflowRegistryClient(mlflow_registry[0]) as registry_client:
        yield registry_client


@pytest.fixture
def populated(mlflow_registry: tuple[str, dict[str, object]]) -> Populated:
    return cast(Populated, mlflow_registry[1])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def offline_registry() -> Iterator[MlflowRegistryClient]:
    """A client of a registry that is down: whatever it refuses, it refuses without the network."""
    with MlflowRegistryClient(f"http://127.0.0.1:{closed_port()}", retries=0) as registry_client:
        yield registry_client


def logged_bytes(url: str, artifact: ArtifactInfo) -> bytes:
    """The artifact's bytes as MLflow's own client downloads them: the oracle for ours."""
    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact.path, dst_path=scratch, tracking_uri=url
        )
        return Path(local).read_bytes()


def by_name(artifacts: list[ArtifactInfo]) -> dict[str, ArtifactInfo]:
    return {artifact.path.rsplit("/", 1)[-1]: artifact for artifact in artifacts}


def predictions_of(model_file: Path, probe: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with open(model_file, "rb") as f:
        model = pickle.load(f)
    return np.asarray(model.predict(probe))


# --- listing models and versions -------------------------------------------------------------------


def test_list_models_pages_through_every_model_once(
    registry: MlflowRegistryClient, populated: Populated
) -> None:
    first, token = registry.list_models(page_size=5)
    assert len(first) == 5 and token
    second, last_token = registry.list_models(page_size=5, page_token=token)
    assert last_token == ""
    names = [model.name for model in first + second]
    assert sorted(names) == populated["names"]
    assert len(set(names)) == len(names)


def test_latest_versions_are_filled(registry: MlflowRegistryClient, populated: Populated) -> None:
    models = {model.name: model for model in registry.list_models(page_size=100)[0]}
    multi = models[populated["multi_version_model"]]
    assert multi.description == populated["description"]
    assert multi.creation_timestamp > 0 and multi.last_updated_timestamp >= multi.creation_timestamp
    (latest,) = multi.latest_versions
    assert latest.name == multi.name and latest.version == "3"
    assert latest.status == "READY" and latest.current_stage == "None"
    assert latest.run_id and latest.source.startswith("models:/m-")  # MLflow 3: a logged model, not a path
    assert latest.creation_timestamp > 0
    assert models[populated["empty_model"]].latest_versions == ()


def test_list_versions_of_three_version_model(registry: MlflowRegistryClient, populated: Populated) -> None:
    name = populated["multi_version_model"]
    page, token = registry.list_versions(name, page_size=2)
    assert len(page) == 2 and token
    rest, last_token = registry.list_versions(name, page_size=2, page_token=token)
    assert last_token == ""
    versions = page + rest
    assert sorted(v.version for v in versions) == populated["versions"]
    assert {v.name for v in versions} == {name}
    assert len({v.run_id for v in versions}) == 3
    assert all(v.status == "READY" and v.last_updated_timestamp > 0 for v in versions)


def test_list_versions_of_model_without_versions_is_empty(
    registry: MlflowRegistryClient, populated: Populated
) -> None:
    assert registry.list_versions(populated["empty_model"]) == ([], "")


def test_unknown_model_is_not_found(registry: MlflowRegistryClient) -> None:
    with pytest.raises(NotFound, match="no-such-model"):
        registry.list_versions("no-such-model")
    with pytest.raises(NotFound, match="no-such-model"):
        registry.list_artifacts("no-such-model", "1")


def test_unknown_version_is_not_found(registry: MlflowRegistryClient, populated: Populated) -> None:
    with pytest.raises(NotFound, match="version 9"):
        registry.list_artifacts(populated["multi_version_model"], "9")


# --- listing and downloading files -----------------------------------------------------------------


def test_list_artifacts_has_model_pkl_with_its_size(
    registry: MlflowRegistryClient, populated: Populated
) -> None:
    artifacts = registry.list_artifacts(populated["multi_version_model"], "2")
    files = by_name(artifacts)
    assert set(files) == populated["model_files"]
    pkl = files["model.pkl"]
    assert not pkl.is_dir and pkl.file_size == len(logged_bytes(registry.url, pkl)) > 0
    assert pkl.path.startswith("mlflow-artifacts:/") and pkl.path.endswith("/artifacts/model.pkl")
    assert pkl.full_path.startswith(registry.url + "/api/2.0/mlflow-artifacts/artifacts/")


def test_list_artifacts_recurses_into_directories(
    registry: MlflowRegistryClient, populated: Populated
) -> None:
    files = by_name(registry.list_artifacts(populated["code_model"], "1"))
    assert files["code"].is_dir and files["code"].file_size == 0
    helper = files[HELPER_FILE]
    assert helper.path == files["code"].path + "/" + HELPER_FILE
    assert helper.file_size == len(HELPER_SOURCE)


def test_download_file_streams_bytes_as_logged(
    registry: MlflowRegistryClient,
    populated: Populated,
    tmp_path: Path,
) -> None:
    name = populated["multi_version_model"]
    pkl = by_name(registry.list_artifacts(name, "2"))["model.pkl"]
    seen: list[int] = []
    local = registry.download(pkl.path, tmp_path, seen.append)
    assert local == tmp_path / "model.pkl"
    assert local.read_bytes() == logged_bytes(registry.url, pkl)
    assert seen and seen[-1] == pkl.file_size and seen == sorted(seen)
    expected = populated["predictions"][(name, "2")]
    np.testing.assert_array_equal(predictions_of(local, populated["probe"]), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pkl"]  # no staging file left behind


def test_download_by_full_path(
    registry: MlflowRegistryClient,
    populated: Populated,
    tmp_path: Path,
) -> None:
    requirements = by_name(registry.list_artifacts(populated["multi_version_model"], "1"))["requirements.txt"]
    local = registry.download(requirements.full_path, tmp_path)
    assert local == tmp_path / "requirements.txt"
    assert local.read_bytes() == logged_bytes(registry.url, requirements)
    assert "scikit-learn" in local.read_text().splitlines()


def test_download_directory(registry: MlflowRegistryClient, populated: Populated, tmp_path: Path) -> None:
    code_dir = by_name(registry.list_artifacts(populated["code_model"], "1"))["code"]
    local = registry.download(code_dir.path, tmp_path)
    assert local == tmp_path / "code"
    assert [p.name for p in local.iterdir()] == [HELPER_FILE]
    assert (local / HELPER_FILE).read_bytes() == HELPER_SOURCE


def test_download_models_uri_gets_the_whole_version(
    registry: MlflowRegistryClient,
    populated: Populated,
    tmp_path: Path,
) -> None:
    name = populated["code_model"]
    seen: list[int] = []
    local = registry.download(f"models:/{name}/1", tmp_path, seen.append)
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert files == set(populated["model_files"]) | {f"code/{HELPER_FILE}"}
    assert seen[-1] == sum((local / f).stat().st_size for f in files)
    for artifact in registry.list_artifacts(name, "1"):
        if not artifact.is_dir:
            relative = artifact.path.split("/artifacts/", 1)[1]
            assert (local / relative).read_bytes() == logged_bytes(registry.url, artifact), relative
    np.testing.assert_array_equal(
        predictions_of(local / "model.pkl", populated["probe"]), populated["predictions"][(name, "1")]
    )


def test_download_version_source(
    registry: MlflowRegistryClient, populated: Populated, tmp_path: Path
) -> None:
    name = populated["multi_version_model"]
    (version,) = [v for v in registry.list_versions(name)[0] if v.version == "1"]
    local = registry.download(version.source, tmp_path)  # models:/m-<id>
    np.testing.assert_array_equal(
        predictions_of(local / "model.pkl", populated["probe"]), populated["predictions"][(name, "1")]
    )


def test_download_run_artifact(registry: MlflowRegistryClient, populated: Populated, tmp_path: Path) -> None:
    (version,) = registry.list_versions(populated["code_model"])[0]
    local = registry.download(f"runs:/{version.run_id}/{RUN_NOTE}", tmp_path)
    assert local == tmp_path / "readme.txt" and local.read_text() == RUN_NOTE_TEXT


def test_download_missing_file_is_not_found(
    registry: MlflowRegistryClient, populated: Populated, tmp_path: Path
) -> None:
    pkl = by_name(registry.list_artifacts(populated["multi_version_model"], "1"))["model.pkl"]
    with pytest.raises(NotFound, match="no-such-file"):
        registry.download(pkl.path.replace("model.pkl", "no-such-file"), tmp_path)
    with pytest.raises(NotFound, match="no-such-model"):
        registry.download("models:/no-such-model/1", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_to_overwrite(
    registry: MlflowRegistryClient, populated: Populated, tmp_path: Path
) -> None:
    pkl = by_name(registry.list_artifacts(populated["multi_version_model"], "1"))["model.pkl"]
    (tmp_path / "model.pkl").write_bytes(b"keep me")
    with pytest.raises(AlreadyExists, match=r"model\.pkl"):
        registry.download(pkl.path, tmp_path)
    assert (tmp_path / "model.pkl").read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "path",
    [
        "mlflow-artifacts:/1/../../../etc/passwd",
        "mlflow-artifacts:/1/%2e%2e/%2e%2e/etc/passwd",
        "/databricks/../etc/passwd",
        "models:/../1",
        "..",
        "relative/path/model.pkl",
    ],
)
def test_download_refuses_paths_outside_the_registry(
    offline_registry: MlflowRegistryClient, path: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument):
        offline_registry.download(path, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_urls_of_other_hosts(offline_registry: MlflowRegistryClient, tmp_path: Path) -> None:
    # The token goes with every request, so a URL of another host is refused before any connection.
    other_host = offline_registry.url.replace("127.0.0.1", "127.0.0.2")
    with pytest.raises(InvalidArgument, match="not a URL of registry"):
        offline_registry.download(f"{other_host}/api/2.0/mlflow-artifacts/artifacts/1/model.pkl", tmp_path)


# --- failures --------------------------------------------------------------------------------------


class CuttingRelay:
    """A TCP relay to the registry that breaks the first transfer of `target` after `keep` body bytes."""

    def __init__(self, upstream_port: int, target: bytes, keep: int) -> None:
        self._upstream, self._target, self._keep = upstream_port, target, keep
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._upstream))
                armed = threading.Event()
                threading.Thread(target=self._requests, args=(client, upstream, armed), daemon=True).start()
                threading.Thread(target=self._responses, args=(upstream, client, armed), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.cuts == 0 and self._target in data and b"range:" not in data.lower():
                    armed.set()
                upstream.sendall(data)

    def _responses(self, upstream: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        with contextlib.suppress(OSError), client, upstream:
            remaining = (
                -1
            )  # body bytes to pass before the cut, counted once the armed response's head is seen
            while data := upstream.recv(65536):
                if armed.is_set() and remaining < 0 and b"\r\n\r\n" in data:
                    head, _, data = data.partition(b"\r\n\r\n")
                    client.sendall(head + b"\r\n\r\n")
                    remaining = self._keep
                if remaining >= 0:
                    client.sendall(data[:remaining])
                    remaining -= len(data[:remaining])
                    if remaining == 0:
                        self.cuts += 1
                        client.shutdown(socket.SHUT_RDWR)  # wakes the other pump, unlike close()
                        return
                    continue
                client.sendall(data)


def test_broken_transfer_resumes_where_it_stopped(
    registry: MlflowRegistryClient, populated: Populated, tmp_path: Path
) -> None:
    relay = CuttingRelay(int(urlsplit(registry.url).port or 0), target=b"model.pkl", keep=100)
    try:
        with MlflowRegistryClient(f"http://127.0.0.1:{relay.port}") as through_relay:
            pkl = by_name(through_relay.list_artifacts(populated["multi_version_model"], "3"))["model.pkl"]
            seen: list[int] = []
            local = through_relay.download(pkl.path, tmp_path, seen.append)
    finally:
        relay.close()
    assert relay.cuts == 1
    assert seen[0] == 100 and seen[-1] == pkl.file_size and seen == sorted(seen)  # resumed, not restarted
    assert local.read_bytes() == logged_bytes(registry.url, pkl)


class FlakyFileProxy:
    """An HTTP proxy to the registry that fails every GET of one artifact file: odd requests get a 503,
    even ones a transfer cut after a few bytes. Counts those requests."""

    def __init__(self, upstream: str, file_name: str) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if not (
                    self.path.startswith("/api/2.0/mlflow-artifacts/artifacts/")
                    and self.path.endswith(f"/{file_name}")
                ):
                    answer = httpx.get(upstream + self.path)
                    return self._answer(answer.status_code, answer.content, len(answer.content))
                with proxy._lock:
                    proxy.file_requests += 1
                    cut = proxy.file_requests % 2 == 0
                if cut:
                    self._answer(200, b"0123456789", 1000)
                    self.close_connection = True
                else:
                    body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}'
                    self._answer(503, body, len(body))

            def _answer(self, status: int, body: bytes, length: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        self.file_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_failing_file_read_is_tried_retries_plus_one_times(
    registry: MlflowRegistryClient, populated: Populated, tmp_path: Path
) -> None:
    proxy = FlakyFileProxy(registry.url, "model.pkl")
    try:
        with MlflowRegistryClient(proxy.url, retries=2) as through_proxy:
            pkl = by_name(through_proxy.list_artifacts(populated["multi_version_model"], "3"))["model.pkl"]
            with pytest.raises(Unavailable, match=r"HTTP 503 \(tried 3 times\)"):
                through_proxy.download(pkl.path, tmp_path)
    finally:
        proxy.close()
    # 503, cut, 503: the read loop's attempts are the only ones (each must not retry on its own).
    assert proxy.file_requests == 3
    assert list(tmp_path.iterdir()) == []


def test_registry_down_is_unavailable_quickly() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    down = MlflowRegistryClient(url, retries=3)
    with down, pytest.raises(Unavailable, match="unreachable") as error:
        down.list_models()
    assert url in str(error.value) and "4 times" in str(error.value)
    assert time.monotonic() - started < 5.0


def test_bad_url_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="http"):
        MlflowRegistryClient("ftp://registry.example")


# --- Databricks: Bearer token and DBFS (a stand-in; Databricks cannot run here) --------------------

TOKEN = "dapi-test-token"
BIG = np.random.default_rng(7).integers(0, 256, size=2 * 1024 * 1024 + 12345, dtype=np.uint8).tobytes()


@pytest.fixture
def databricks() -> Iterator[DbfsServer]:
    registry = DbfsRegistry(
        token=TOKEN,
        model="wine_quality",
        files={"MLmodel": b"flavors: {}\n", "model.pkl": BIG, "code/helper.py": b"x = 1\n"},
    )
    with dbfs_server(registry) as server:
        yield server


def test_databricks_lists_models_with_token(databricks: DbfsServer) -> None:
    with MlflowRegistryClient(databricks.url, TOKEN) as registry:
        (model,), token = registry.list_models()
    assert token == "" and model.name == "wine_quality" and model.user_id == databricks.registry.user_id
    (latest,) = model.latest_versions
    assert latest.source.startswith("dbfs:/") and latest.current_stage == "Production"


def test_databricks_lists_dbfs_artifacts(databricks: DbfsServer) -> None:
    with MlflowRegistryClient(databricks.url, TOKEN) as registry:
        files = by_name(registry.list_artifacts("wine_quality", "1"))
    version_dir = databricks.registry.version_dir
    pkl = files["model.pkl"]
    assert pkl.path == f"{version_dir}/model.pkl" and pkl.file_size == len(BIG)
    assert pkl.full_path == f"{databricks.url}/api/2.0/dbfs/read?path={version_dir}/model.pkl"
    assert pkl.modification_time > 0
    assert files["code"].is_dir and files["helper.py"].path == f"{version_dir}/code/helper.py"


def test_databricks_downloads_in_chunks(databricks: DbfsServer, tmp_path: Path) -> None:
    seen: list[int] = []
    with MlflowRegistryClient(databricks.url, TOKEN) as registry:
        pkl = by_name(registry.list_artifacts("wine_quality", "1"))["model.pkl"]
        local = registry.download(pkl.path, tmp_path / "by-path", seen.append)
        by_url = registry.download(pkl.full_path, tmp_path / "by-url")
    assert local.read_bytes() == BIG and by_url.read_bytes() == BIG
    assert databricks.registry.reads == 6  # 3 reads of at most 1 MiB per download
    assert seen == [1024 * 1024, 2 * 1024 * 1024, len(BIG)]


def test_databricks_downloads_version_tree(databricks: DbfsServer, tmp_path: Path) -> None:
    with MlflowRegistryClient(databricks.url, TOKEN) as registry:
        local = registry.download("models:/wine_quality/1", tmp_path)
    assert local == tmp_path / "wine_quality"
    assert (local / "model.pkl").read_bytes() == BIG
    assert (local / "code" / "helper.py").read_bytes() == b"x = 1\n"


def test_databricks_wrong_token_is_unauthenticated(databricks: DbfsServer, tmp_path: Path) -> None:
    with MlflowRegistryClient(databricks.url, "wrong-token") as registry:
        with pytest.raises(Unauthenticated, match="refused the token"):
            registry.list_models()
        with pytest.raises(Unauthenticated):
            registry.download(f"{databricks.registry.version_dir}/model.pkl", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_databricks_5xx_is_retried_then_unavailable(databricks: DbfsServer, tmp_path: Path) -> None:
    with MlflowRegistryClient(databricks.url, TOKEN, retries=2) as registry:
        databricks.registry.failures_to_inject = 2
        assert registry.list_models()[0]
        databricks.registry.failures_to_inject = 1000
        with pytest.raises(Unavailable, match="HTTP 503"):
            registry.download("models:/wine_quality/1", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_databricks_partial_failure_leaves_nothing(databricks: DbfsServer, tmp_path: Path) -> None:
    def fail_from_now_on(done: int) -> None:
        databricks.registry.failures_to_inject = 1000

    with MlflowRegistryClient(databricks.url, TOKEN, retries=0) as registry, pytest.raises(Unavailable):
        registry.download("models:/wine_quality/1", tmp_path, fail_from_now_on)
    assert list(tmp_path.iterdir()) == []


def test_databricks_files_off_dbfs_are_a_failed_precondition(databricks: DbfsServer, tmp_path: Path) -> None:
    databricks.registry.download_uri = "abfss://models@account.dfs.core.windows.net/wine_quality/1"
    with MlflowRegistryClient(databricks.url, TOKEN) as registry:
        with pytest.raises(FailedPrecondition, match=r"abfss://.*does not serve over HTTP"):
            registry.list_artifacts("wine_quality", "1")
        with pytest.raises(FailedPrecondition):
            registry.download("models:/wine_quality/1", tmp_path)
