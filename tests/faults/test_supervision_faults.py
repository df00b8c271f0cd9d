"""Supervision under faults, against the real gRPC app, runtime servers and `flightline serve`: a runtime
server's TCP port taken for a while, load errors vs crashes, resume at start-up, SIGTERM with open streams."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from support.auth import flight_connect
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.runtimes.base import ModelLoadError
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.backend import SHARED, LoadRequest, ServerGroup
from flightline.server.hosting.local import LocalBackend, RuntimeFault, ServerProcess, State
from flightline.server.settings import Settings
from flightline.server.store.artifacts import ArtifactStore
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

SETTLED = 120.0  # seconds a deploy or upload may take on a loaded 2-core machine


def features(rows: int) -> pa.Table:
    values = np.random.default_rng(0).normal(size=(rows, 29)).astype(np.float32)
    return pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})


def upload(client: Client, workspace_id: int, path: Path, name: str, framework: str) -> int:
    """Uploads and waits until the version is READY (the upload may return before it is)."""
    meta = model_pb2.UploadMetadata(
        name=name, workspace_id=workspace_id, conversion=model_pb2.Conversion(framework=framework)
    )
    response = client.upload_file(path, meta)
    request = model_pb2.GetModelVersionRequest(model_id=response.model_id, version=response.version.version)
    pending = (model_pb2.MODEL_STATUS_PENDING_CONVERSION, model_pb2.MODEL_STATUS_CONVERTING)
    assert wait_until(lambda: client.models.GetModelVersion(request).status not in pending, SETTLED)
    version = client.models.GetModelVersion(request)
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    return int(response.model_id)


def settled(client: Client, name: str) -> deployment_pb2.Deployment:
    """The deployment once it is no longer DEPLOYING."""
    request = deployment_pb2.GetDeploymentRequest(name=name)
    deploying = deployment_pb2.DEPLOYMENT_STATUS_DEPLOYING
    assert wait_until(lambda: client.deployments.GetDeployment(request).status != deploying, SETTLED)
    deployment: deployment_pb2.Deployment = client.deployments.GetDeployment(request)
    return deployment


def deploy(client: Client, workspace_id: int, name: str, model_id: int) -> deployment_pb2.Deployment:
    client.deploy(workspace_id, name, model_id)
    return settled(client, name)


def workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def remote_settings(data: Path, **changes: object) -> Settings:
    """Every step on a runtime server (no in-process ONNX), so the data path needs the runtime."""
    return replace(settings_for(data), in_process_native=False, **changes)  # type: ignore[arg-type]


def readable_folder() -> Path:
    """A folder the sandboxed runtime user can read (pytest's tmp_path is the server user's only)."""
    folder = Path(tempfile.mkdtemp(prefix="flightline-test-"))
    folder.chmod(0o755)
    return folder


def port_of(process: ServerProcess) -> int:
    return int(process.location.rsplit(":", 1)[1])


DATA = ServerGroup("server", SHARED)
CODE = ServerGroup("server", "ws-1")


def put(backend: LocalBackend, path: Path, key: str, runtime: str) -> LoadRequest:
    return LoadRequest(key, runtime, backend.store.put_file(path).sha256, runtime)


# -- a runtime's port taken for a while: a fault of the TCP transport (unix sockets, the default, are the
# server's own path in its own folder, which it replaces at start)


@pytest.fixture
def remote_app(tmp_path: Path) -> Iterator[App]:
    with App(remote_settings(tmp_path / "data", runtime_transport="tcp")) as running:
        yield running


def hold(port: int, timeout: float = 10.0) -> socket.socket:
    """Binds and listens on `port` (without SO_REUSEPORT, so a gRPC server cannot share it) as soon as the
    port is free."""
    deadline = time.monotonic() + timeout
    while True:
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            return holder
        except OSError:
            holder.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def test_a_runtime_whose_port_is_taken_comes_back_once_it_is_free(remote_app: App, tmp_path: Path) -> None:
    with Client(remote_app.grpc_address) as client:
        ws = workspace(client, "ports")
        model = upload(client, ws, build_mlp(tmp_path / "m.onnx"), "m", "onnx")
        deployment = deploy(client, ws, "held", model)
        assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
        process = remote_app.backend.server(DATA)
        location, port = process.location, port_of(process)
        os.kill(process.pid, signal.SIGKILL)
        holder = hold(port)  # the restarted runtime needs over a second to get to its bind; we need ms
        try:
            # Three failed starts on the taken port: the old supervisor gave up (FAILED) after three.
            assert wait_until(lambda: process.restarts >= 4, timeout=60), process
            assert process.state is State.RESTARTING
            held = client.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="held"))
            assert held.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        finally:
            holder.close()
        remote_app.backend.wait_healthy(DATA, timeout=60)
        assert process.location == location  # same port: what clients hold stays valid
        again = client.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="held"))
        assert again.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        assert infer(again.flight_location, "held", features(10)).num_rows == 10


def test_a_port_taken_for_longer_than_the_retries_fails_by_a_fault_with_the_reason(tmp_path: Path) -> None:
    failures: list[tuple[str, str, bool]] = []
    with LocalBackend(
        tmp_path / "runtimes",
        ArtifactStore(str(tmp_path / "store")),
        transport="tcp",
        check_interval=0.1,
        health_timeout=1.0,
        retry_for=3.0,
        on_failure=lambda key, reason, by_fault: failures.append((key, reason, by_fault)),
    ) as backend:
        backend.load(DATA, put(backend, build_mlp(tmp_path / "m.onnx"), "m.0", "onnx"))
        process = backend.server(DATA)
        port = port_of(process)
        os.kill(process.pid, signal.SIGKILL)
        holder = hold(port)
        try:
            started = time.monotonic()
            assert wait_until(lambda: process.state is not State.HEALTHY, timeout=10)  # the watcher noticed
            with pytest.raises(RuntimeFault, match=f"could not listen on grpc\\+tcp://127.0.0.1:{port}"):
                backend.wait_healthy(DATA, timeout=60)
            assert time.monotonic() - started >= 3.0  # retried for retry_for seconds first
        finally:
            holder.close()
        assert process.state is State.FAILED and process.failed_by_fault
        assert wait_until(lambda: bool(failures), timeout=10)  # reported after the state is set
        assert failures == [("m.0", process.failure, True)]  # reported once, as a fault
        assert backend.groups() == []  # the next load starts a fresh server


# -- a load error fails at once; a crash before ready is a fault, retried for a bounded time

CRASHES_WHILE = """
import os
from pathlib import Path

if Path({marker!r}).exists():
    os._exit(1)  # dies before it is ready, without a load error: a fault, not the model's answer


def wallaroo_json(data):
    return data
"""
FAILS_TO_LOAD = "raise RuntimeError('missing weights file')\n\ndef wallaroo_json(data):\n    return data\n"


def test_a_load_error_fails_at_once_and_a_crash_is_retried(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(FAILS_TO_LOAD)
    folder = readable_folder()
    marker = folder / "crash"
    marker.touch(mode=0o644)
    crashing = tmp_path / "crashing.py"
    crashing.write_text(CRASHES_WHILE.format(marker=str(marker)))
    store = ArtifactStore(str(tmp_path / "store"))
    try:
        with LocalBackend(tmp_path / "runtimes", store, check_interval=0.1, retry_for=4.0) as backend:
            started = time.monotonic()
            with pytest.raises(ModelLoadError, match="missing weights file") as load_error:
                backend.load(CODE, put(backend, broken, "broken.0", "python"))
            assert not isinstance(load_error.value, RuntimeFault)
            assert time.monotonic() - started < 4.0  # one try: no retries for the model's own error

            started = time.monotonic()
            with pytest.raises(RuntimeFault, match="exited with code 1 while loading the model"):
                backend.load(CODE, put(backend, crashing, "crashing.0", "python"))
            assert time.monotonic() - started >= 4.0  # retried for retry_for seconds
            assert "crashing.0" not in backend.server(CODE).models

            # A fault that clears while the backend retries: the load succeeds.
            with ThreadPoolExecutor(1) as pool:
                loading = pool.submit(backend.load, CODE, put(backend, crashing, "recovers.0", "python"))
                assert wait_until(lambda: backend.server(CODE).restarts >= 1, timeout=30)
                marker.unlink()
                loading.result(timeout=60)
            proc = backend.wait_healthy(CODE, timeout=30)
            assert "recovers.0" in proc.models and proc.restarts >= 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_start_up_retries_deployments_that_failed_by_a_fault(tmp_path: Path) -> None:
    folder = readable_folder()  # the step runs as the sandbox user: pytest's tmp_path is not for it
    marker = folder / "crash"
    marker.touch(mode=0o644)
    crashing = tmp_path / "crashing.py"
    crashing.write_text(CRASHES_WHILE.format(marker=str(marker)))
    broken = tmp_path / "broken.py"
    broken.write_text(FAILS_TO_LOAD)
    settings = remote_settings(tmp_path / "data", runtime_retry_seconds=2.0)
    with App(settings) as first, Client(first.grpc_address) as client:
        ws = workspace(client, "resume")
        faulted = deploy(client, ws, "faulted", upload(client, ws, crashing, "crashing", "python"))
        assert faulted.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED
        assert "while loading the model" in faulted.status_reason
        assert first.store.get_deployment(ws, "faulted").failed_by_fault
        model_failed = deploy(client, ws, "model-failed", upload(client, ws, broken, "broken", "python"))
        assert model_failed.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED
        assert not first.store.get_deployment(ws, "model-failed").failed_by_fault
    marker.unlink()  # the fault is gone by the next start
    shutil.rmtree(folder)
    with App(settings) as second, Client(second.grpc_address) as client:
        again = settled(client, "faulted")
        assert again.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, again.status_reason
        assert infer(again.flight_location, "faulted", pa.table({"n": [1, 2, 3]})).num_rows == 3
        still = settled(client, "model-failed")  # the model's own error is not retried
        assert still.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED
        assert "missing weights file" in still.status_reason


# -- SIGTERM ends `flightline serve` even while clients hold streams open


def test_sigterm_ends_serve_within_bounded_time_despite_open_streams(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLIGHTLINE_SHUTDOWN_GRACE": "2"}
    command = [sys.executable, "-m", "flightline.server.cli", "serve", "--sample"]
    options = [
        *("--data-dir", str(tmp_path / "data")),
        *("--grpc-port", "0", "--flight-port", "0", "--metrics-port", "0"),
    ]
    server = subprocess.Popen(
        [*command, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    # Drained all along: a server that logs every RPC would otherwise block on a full stderr pipe.
    logged: list[str] = []
    drain = threading.Thread(target=lambda: logged.extend(server.stderr or ()), daemon=True)
    drain.start()
    streams: list[tuple[flight.FlightStreamWriter, flight.FlightStreamReader]] = []
    flight_client: flight.FlightClient | None = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("FLIGHTLINE_SERVING"), line
        addresses = dict(part.split("=", 1) for part in line.split()[1:])
        with Client(addresses["grpc"]) as client:
            assert wait_until(
                lambda: any(
                    d.name == "ccfraud" and d.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
                    for d in client.deployments.ListDeployments(
                        deployment_pb2.ListDeploymentsRequest()
                    ).deployments
                ),
                timeout=SETTLED,
            )
        values = np.zeros((2, 29), dtype=np.float32)
        batch = pa.record_batch(
            [pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)], names=["inputs"]
        )
        flight_client = flight_connect(addresses["flight"])
        busy = flight_client.do_exchange(flight.FlightDescriptor.for_path("ccfraud"))
        busy[0].begin(batch.schema)
        busy[0].write_batch(batch)
        assert busy[1].read_chunk().data.num_rows == 2  # a stream mid-use, then left waiting on the client
        idle = flight_client.do_exchange(flight.FlightDescriptor.for_path("ccfraud", "outputs"))
        idle[0].begin(batch.schema)  # a stream that never sends a batch
        streams += [busy, idle]

        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 15  # grace 2 s + stopping runtimes; not forever
        drain.join(timeout=10)
        assert any("exiting with Flight client streams still open" in entry for entry in logged)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for writer, _ in streams:
            with contextlib.suppress(pa.ArrowException, OSError):
                writer.close()
        if flight_client is not None:
            flight_client.close()
