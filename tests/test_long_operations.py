"""Uploads and deploys under faults, and as long-running operations: truncated or abandoned uploads
store nothing, conversion cannot touch stored artifacts, preparation and deployment run in the
background and are followed with Watch streams, and a server killed mid-conversion recovers."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import settings_for
from sklearn.linear_model import LogisticRegression
from support.dbfs_server import DbfsRegistry, dbfs_server
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.services.changes import MAX_WATCHES
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2


class SlowUnpickle:
    """Unpickles to time.sleep(seconds): a conversion that takes as long as we like."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return time.sleep, (self.seconds,)


def workspace(client: Client, name: str = "ops") -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def meta(name: str, workspace_id: int, framework: str, **conversion: object) -> model_pb2.UploadMetadata:
    return model_pb2.UploadMetadata(
        name=name,
        workspace_id=workspace_id,
        conversion=model_pb2.Conversion(framework=framework, **conversion),
    )


def stored(data_dir: Path) -> list[Path]:
    root = data_dir / "artifacts" / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def leftovers(data_dir: Path) -> list[Path]:
    """Upload temps in the artifact store and preparation work folders."""
    places = [data_dir / "artifacts" / "tmp", data_dir / "work" / "prepare"]
    return [p for place in places if place.exists() for p in place.iterdir()]


def assert_store_intact(data_dir: Path) -> None:
    for path in stored(data_dir):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path


def registry_pickle(client: Client, workspace_id: int, url: str) -> tuple[str, str]:
    """(registry id, path of model.pkl) in the Databricks stand-in serving model "m"."""
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace_id, name="dbx", url=url, token="t")
    )
    artifacts = client.registries.ListModelVersionArtifacts(
        registry_pb2.ListModelVersionArtifactsRequest(registry_id=registry.id, name="m", version="1")
    ).artifacts
    return registry.id, next(a.path for a in artifacts if a.path.endswith("model.pkl"))


def sklearn_pickle(features: int = 4, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).normal(size=(200, features))
    return pickle.dumps(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)))


# ---- item 1: an upload is stored only when complete ----


def test_upload_without_size_is_refused(app: App, client: Client, tmp_path: Path) -> None:
    ws = workspace(client)
    data = build_mlp(tmp_path / "m.onnx").read_bytes()
    requests = [model_pb2.UploadModelRequest(metadata=meta("nosize", ws, "onnx"))]
    requests += [model_pb2.UploadModelRequest(chunk=data)]
    with pytest.raises(grpc.RpcError) as refused:
        client.models.UploadModel(iter(requests))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "size_bytes" in (refused.value.details() or "")
    assert stored(app.settings.data_dir) == []


KILLED_CLIENT = textwrap.dedent("""
    import os, sys, threading
    import grpc
    from flightline.transport import open_channel
    from flightline.v1 import model_pb2, model_pb2_grpc

    address, workspace_id, path, declare, send = sys.argv[1:6]
    data = open(path, "rb").read()
    meta = model_pb2.UploadMetadata(
        name="killed", workspace_id=int(workspace_id), conversion=model_pb2.Conversion(framework="onnx")
    )
    if declare == "1":
        meta.size_bytes = len(data)

    def requests():
        yield model_pb2.UploadModelRequest(metadata=meta)
        part = data[: int(len(data) * float(send))]
        for i in range(0, len(part), 4096):
            yield model_pb2.UploadModelRequest(chunk=part[i : i + 4096])
        print("SENT", flush=True)
        threading.Event().wait()  # never ends the stream: the test kills this process

    channel = open_channel(address, os.environ["FLIGHTLINE_TOKEN"])  # the test server's admin token
    try:
        model_pb2_grpc.ModelServiceStub(channel).UploadModel(requests())
    except grpc.RpcError as error:  # refused before the whole part was sent
        print("REFUSED", error.code().name, flush=True)
""")


@pytest.mark.parametrize(
    ("declare", "send"),
    [
        ("0", "0.5"),  # an old client: no size, half the file (stored as READY before the fix)
        ("1", "0.5"),  # half of a declared size
        ("1", "1.0"),  # every byte, but the client died before ending its stream
    ],
)
def test_client_killed_mid_upload_stores_nothing(
    app: App, client: Client, tmp_path: Path, declare: str, send: str
) -> None:
    ws = workspace(client)
    kept = client.upload_file(build_mlp(tmp_path / "kept.onnx"), meta("kept", ws, "onnx"))
    path = build_mlp(tmp_path / "big.onnx", seed=5)
    uploader = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, app.grpc_address, str(ws), str(path), declare, send],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert uploader.stdout is not None
        if declare == "0":
            # Without a declared size the server refuses the upload at once (before the fix it
            # stored the half it got as a READY version once the client died).
            out, _ = uploader.communicate(timeout=30)
            assert "REFUSED INVALID_ARGUMENT" in out, out
        else:
            assert uploader.stdout.readline().strip() == "SENT"
            time.sleep(0.5)  # let the bytes reach the server
            uploader.kill()
            uploader.wait(timeout=10)
    finally:
        if uploader.poll() is None:
            uploader.kill()
    data_dir = app.settings.data_dir
    assert wait_until(lambda: leftovers(data_dir) == [], timeout=10), leftovers(data_dir)
    time.sleep(0.5)  # a wrongly accepted upload would be recorded by now
    models = client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=ws)).models
    assert [m.name for m in models] == ["kept"]
    assert [p.name for p in stored(data_dir)] == [kept.version.sha256]
    assert_store_intact(data_dir)


@pytest.mark.parametrize("send", [0.5, 1.0])
def test_deadline_mid_upload_stores_nothing(app: App, client: Client, tmp_path: Path, send: float) -> None:
    ws = workspace(client)
    data = build_mlp(tmp_path / "m.onnx").read_bytes()
    head = meta("late", ws, "onnx")
    head.size_bytes = len(data)

    def requests() -> Iterator[model_pb2.UploadModelRequest]:
        yield model_pb2.UploadModelRequest(metadata=head)
        yield model_pb2.UploadModelRequest(chunk=data[: int(len(data) * send)])
        time.sleep(3)  # the deadline passes before the stream ends

    with pytest.raises(grpc.RpcError) as late:
        client.models.UploadModel(requests(), timeout=1.0)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    data_dir = app.settings.data_dir
    assert wait_until(lambda: leftovers(data_dir) == [], timeout=10), leftovers(data_dir)
    time.sleep(0.5)
    assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=ws)).models
    assert stored(data_dir) == []


# ---- item 2: conversion cannot overwrite a stored artifact ----


def test_same_bytes_under_an_onnx_name_leave_version_1_intact(
    app: App, client: Client, tmp_path: Path
) -> None:
    ws = workspace(client)
    schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 4))]).serialize().to_pybytes()
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(sklearn_pickle())
    first = client.upload_file(pkl, meta("twice", ws, "sklearn", input_schema=schema)).version
    assert first.status == model_pb2.MODEL_STATUS_READY, first.status_reason
    # The converter writes model.onnx; before the fix its work folder held a link to the stored pickle
    # under the upload's name, so this overwrote version 1's original bytes.
    disguised = tmp_path / "model.onnx"
    disguised.write_bytes(pkl.read_bytes())
    second = client.upload_file(disguised, meta("twice", ws, "sklearn", input_schema=schema)).version
    assert second.status == model_pb2.MODEL_STATUS_READY, second.status_reason
    assert second.original_sha256 == first.original_sha256

    data_dir = app.settings.data_dir
    assert_store_intact(data_dir)
    original = data_dir / "artifacts" / "sha256" / first.original_sha256[:2] / first.original_sha256
    assert original.stat().st_mode & 0o777 == 0o444  # stored artifacts are read-only
    deployment = client.deploy(ws, "twice", first.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    probe = np.random.default_rng(1).normal(size=(5, 4))
    table = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(probe.ravel()), 4)})
    expected = pickle.loads(pkl.read_bytes()).predict(probe)
    got = infer(deployment.flight_location, "twice", table, mode="outputs").column("out.predictions")
    np.testing.assert_array_equal(got.to_numpy(), expected)


# ---- item 4: long operations are visible ----


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[App]:
    """One preparation at a time, so a second upload visibly queues behind a slow one."""
    with App(replace(settings_for(tmp_path / "data"), prepare_workers=1)) as running:
        yield running


def test_uploads_return_pending_and_watch_shows_every_state(one_worker: App, tmp_path: Path) -> None:
    with Client(one_worker.grpc_address) as client:
        ws = workspace(client)
        slow = tmp_path / "slow.pkl"
        slow.write_bytes(pickle.dumps(SlowUnpickle(3)))
        started = time.monotonic()
        first = client.upload_file(slow, meta("slow", ws, "sklearn"), wait=False)
        assert time.monotonic() - started < 2.5  # returned before the 3 s conversion
        assert first.version.status == model_pb2.MODEL_STATUS_PENDING_CONVERSION
        second = client.upload_file(build_mlp(tmp_path / "m.onnx"), meta("quick", ws, "onnx"), wait=False)
        assert second.version.status == model_pb2.MODEL_STATUS_PENDING_CONVERSION

        # One worker: while the slow one is CONVERTING, the second waits its turn PENDING_CONVERSION.
        first_request = model_pb2.GetModelVersionRequest(model_id=first.model_id)
        assert wait_until(
            lambda: client.models.GetModelVersion(first_request).status == model_pb2.MODEL_STATUS_CONVERTING,
            timeout=5,
        )
        second_request = model_pb2.GetModelVersionRequest(model_id=second.model_id)
        assert (
            client.models.GetModelVersion(second_request).status == model_pb2.MODEL_STATUS_PENDING_CONVERSION
        )

        seen: list[int] = []
        final = client.wait_version(second.model_id, 1, on_status=lambda v: seen.append(v.status))
        # Queued, then (unless it finished between two reads) converting, then ready: in order, once each.
        order = [
            model_pb2.MODEL_STATUS_PENDING_CONVERSION,
            model_pb2.MODEL_STATUS_CONVERTING,
            model_pb2.MODEL_STATUS_READY,
        ]
        assert seen[0] == order[0] and seen[-1] == order[-1], seen
        assert seen == [s for s in order if s in seen], seen
        assert final.status == model_pb2.MODEL_STATUS_READY
        slow_final = client.models.GetModelVersion(model_pb2.GetModelVersionRequest(model_id=first.model_id))
        assert slow_final.status == model_pb2.MODEL_STATUS_ERROR and slow_final.status_reason

        # A finished version's watch sends its state and ends.
        stream = client.models.WatchModelVersion(
            model_pb2.WatchModelVersionRequest(model_id=second.model_id), timeout=10
        )
        assert [v.status for v in stream] == [model_pb2.MODEL_STATUS_READY]


def test_watch_errors_and_slots_come_back_when_clients_leave(one_worker: App, tmp_path: Path) -> None:
    with Client(one_worker.grpc_address) as client:
        for call in (
            lambda: list(client.models.WatchModelVersion(model_pb2.WatchModelVersionRequest(model_id=99))),
            lambda: list(
                client.deployments.WatchDeployment(deployment_pb2.WatchDeploymentRequest(name="no"))
            ),
        ):
            with pytest.raises(grpc.RpcError) as missing:
                call()
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # streaming handlers map errors too
        ws = workspace(client)
        slow = tmp_path / "slow.pkl"
        slow.write_bytes(pickle.dumps(SlowUnpickle(120)))
        pending = client.upload_file(slow, meta("slow", ws, "sklearn"), wait=False)
        request = model_pb2.WatchModelVersionRequest(model_id=pending.model_id)
        watches = [client.models.WatchModelVersion(request) for _ in range(MAX_WATCHES)]
        for watch in watches:
            assert next(watch).status in (
                model_pb2.MODEL_STATUS_PENDING_CONVERSION,
                model_pb2.MODEL_STATUS_CONVERTING,
            )
        with pytest.raises(grpc.RpcError) as full:
            next(client.models.WatchModelVersion(request))
        assert full.value.code() == grpc.StatusCode.UNAVAILABLE
        for watch in watches:
            watch.cancel()

        # The server ends the abandoned watches and frees their slots (and their worker threads).
        def opens() -> bool:
            try:
                stream = client.models.WatchModelVersion(request)
                next(stream)
                stream.cancel()
                return True
            except grpc.RpcError:
                return False

        assert wait_until(opens, timeout=10)
        assert client.models.GetModel(model_pb2.GetModelRequest(model_id=pending.model_id)).name == "slow"


def test_deploy_returns_deploying_then_watch_follows_it(client: Client, tmp_path: Path) -> None:
    ws = workspace(client)
    model = client.upload_file(build_mlp(tmp_path / "m.onnx"), meta("m", ws, "onnx")).model_id
    deploying = client.deploy(ws, "watched", model, wait=False)
    assert deploying.status == deployment_pb2.DEPLOYMENT_STATUS_DEPLOYING
    seen: list[int] = []
    running = client.wait_deployment("watched", on_status=lambda d: seen.append(d.status))
    assert running.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
    assert seen[-1] == deployment_pb2.DEPLOYMENT_STATUS_RUNNING and len(seen) <= 2
    # ONNX runs in the front door only (issue 7): no runtime server location, and the front door serves it.
    assert (running.steps[0].runtime, running.steps[0].location) == ("onnx", "")
    assert running.flight_location.startswith("grpc+tcp://")
    client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="watched"))
    stream = client.deployments.WatchDeployment(deployment_pb2.WatchDeploymentRequest(name="watched"))
    assert [d.status for d in stream] == [deployment_pb2.DEPLOYMENT_STATUS_STOPPED]


def test_deploy_that_fails_in_the_background_ends_failed_with_reason(client: Client, tmp_path: Path) -> None:
    ws = workspace(client)
    script = tmp_path / "fails.py"
    script.write_text("raise RuntimeError('no weights')\n\ndef wallaroo_json(data):\n    return data\n")
    model = client.upload_file(script, meta("fails", ws, "python")).model_id
    assert client.deploy(ws, "fails", model, wait=False).status == deployment_pb2.DEPLOYMENT_STATUS_DEPLOYING
    failed = client.wait_deployment("fails", timeout=60)
    assert failed.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED and "no weights" in failed.status_reason


# ---- item 7: schema errors, for both upload paths ----

RAGGED = pa.schema([pa.field("inputs", pa.list_(pa.float64()))])
MIXED = pa.schema(
    [pa.field("inputs", pa.dense_union([pa.field("f", pa.float64()), pa.field("s", pa.string())]))]
)
WRONG_WIDTH = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 7))])  # the model takes 4 features


@pytest.mark.parametrize(
    ("schema", "expected"), [(RAGGED, "variable-size list"), (MIXED, "mixes value types")]
)
def test_schema_breaking_the_data_rules_is_refused_on_both_paths(
    app: App, client: Client, tmp_path: Path, schema: pa.Schema, expected: str
) -> None:
    ws = workspace(client)
    conversion = {"input_schema": schema.serialize().to_pybytes()}
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(sklearn_pickle())
    with pytest.raises(grpc.RpcError) as direct:
        client.upload_file(pkl, meta("rules", ws, "sklearn", **conversion))
    with dbfs_server(DbfsRegistry(token="t", model="m", files={"model.pkl": pkl.read_bytes()})) as dbx:
        registry_id, path = registry_pickle(client, ws, dbx.url)
        with pytest.raises(grpc.RpcError) as from_registry:
            client.models.UploadFromRegistry(
                model_pb2.UploadFromRegistryRequest(
                    registry_id=registry_id,
                    name="rules",
                    path=path,
                    workspace_id=ws,
                    conversion=model_pb2.Conversion(framework="sklearn", **conversion),
                )
            )
    for refused in (direct, from_registry):
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "conversion.input_schema" in (refused.value.details() or "")
        assert expected in (refused.value.details() or "")
    assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=ws)).models
    assert stored(app.settings.data_dir) == []


def test_schema_the_model_cannot_use_is_an_error_version_on_both_paths(
    client: Client, tmp_path: Path
) -> None:
    ws = workspace(client)
    conversion = model_pb2.Conversion(framework="sklearn", input_schema=WRONG_WIDTH.serialize().to_pybytes())
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(sklearn_pickle())
    head = meta("width", ws, "sklearn")
    head.conversion.CopyFrom(conversion)
    direct = client.upload_file(pkl, head)
    with dbfs_server(DbfsRegistry(token="t", model="m", files={"model.pkl": pkl.read_bytes()})) as dbx:
        registry_id, path = registry_pickle(client, ws, dbx.url)
        pending = client.models.UploadFromRegistry(
            model_pb2.UploadFromRegistryRequest(
                registry_id=registry_id, name="width", path=path, workspace_id=ws, conversion=conversion
            )
        )
    assert pending.version.status == model_pb2.MODEL_STATUS_PENDING_CONVERSION
    from_registry = client.wait_version(pending.model_id, pending.version.version)
    for version in (direct.version, from_registry):
        assert version.status == model_pb2.MODEL_STATUS_ERROR
        assert "7" in version.status_reason and "4" in version.status_reason, version.status_reason
    assert (direct.version.version, from_registry.version) == (1, 2)


# ---- item 4: a server killed mid-conversion recovers ----


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "FLIGHTLINE_DATA_DIR": str(data_dir)}
    ports = ("--grpc-port", "0", "--flight-port", "0", "--metrics-port", "0")
    server = subprocess.Popen(
        [sys.executable, "-m", "flightline.server.cli", "serve", *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("FLIGHTLINE_SERVING"), line
    return server, line.split()[1].removeprefix("grpc=")


def _stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
    return fields[0], int(fields[1])


def converters(server_pid: int) -> list[int]:
    """Live preparation processes started by the server process `server_pid` (its descendants: the
    sandboxed preparation's command line names no path of the data folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state, parent = _stat(int(proc.name))
            while parent not in (0, 1, server_pid):
                parent = _stat(parent)[1]
        except (OSError, ValueError, IndexError):
            continue
        if "flightline.runtimes.prepare" in cmdline and parent == server_pid and state != "Z":
            found.append(int(proc.name))
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (not gone, not a zombie)."""
    running = []
    for pid in pids:
        try:
            if _stat(pid)[0] != "Z":
                running.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return running


def test_server_killed_mid_conversion_recovers_at_restart(tmp_path: Path) -> None:
    data_dir = (tmp_path / "data").resolve()
    slow = tmp_path / "slow.pkl"
    slow.write_bytes(pickle.dumps(SlowUnpickle(120)))
    running: list[int] = []
    server, address = start_server(data_dir)
    try:
        with Client(address) as client:
            ws = workspace(client)
            kept = client.upload_file(build_mlp(tmp_path / "m.onnx"), meta("kept", ws, "onnx"))
            pending = client.upload_file(slow, meta("slow", ws, "sklearn"), wait=False)
            request = model_pb2.GetModelVersionRequest(model_id=pending.model_id)
            assert wait_until(
                lambda: client.models.GetModelVersion(request).status == model_pb2.MODEL_STATUS_CONVERTING,
                timeout=30,
            )
        assert wait_until(lambda: converters(server.pid) != [], timeout=30)
        running = converters(server.pid)
        server.kill()  # SIGKILL: no cleanup code runs
        server.wait(timeout=10)
        assert wait_until(lambda: alive(running) == [], timeout=10), alive(running)
        assert list((data_dir / "work" / "prepare").iterdir()) != []  # the crash left its work folder

        server, address = start_server(data_dir)
        with Client(address) as client:
            version = client.models.GetModelVersion(request)
            assert version.status == model_pb2.MODEL_STATUS_ERROR
            assert "interrupted" in version.status_reason
            assert leftovers(data_dir) == []
            again = client.models.GetModelVersion(model_pb2.GetModelVersionRequest(model_id=kept.model_id))
            assert again.status == model_pb2.MODEL_STATUS_READY
        assert_store_intact(data_dir)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        for pid in alive(running):
            os.kill(pid, signal.SIGKILL)


def test_cli_upload_waits_for_preparation(client: Client, app: App, tmp_path: Path) -> None:
    ws = workspace(client)
    path = build_mlp(tmp_path / "m.onnx")
    command = [sys.executable, "-m", "flightline.server.cli", "upload", str(path), "--name", "cli"]
    command[3:3] = ["--server", app.grpc_address]  # a global option, before the verb
    command += ["--framework", "onnx", "--workspace-id", str(ws)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "version 1: ready on runtime onnx" in " ".join(done.stdout.split())


def test_deploying_deployment_is_resumed_at_start(tmp_path: Path) -> None:
    from flightline.server.store.records import DeploymentStep

    settings = settings_for(tmp_path / "data")
    with App(settings) as first, Client(first.grpc_address) as client:
        ws = workspace(client)
        model = client.upload_file(build_mlp(tmp_path / "m.onnx"), meta("m", ws, "onnx")).model_id
        # As a crash right after Deploy recorded it leaves it: DEPLOYING, with no runtime started.
        first.store.create_deployment(ws, "halfway", (DeploymentStep(model, 1),))
    with App(settings) as second, Client(second.grpc_address) as client:
        resumed = client.wait_deployment("halfway", timeout=60)
        assert resumed.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, resumed.status_reason
        assert second.deployments.live(ws, "halfway") is not None


def test_stopping_the_server_ends_a_running_conversion(tmp_path: Path) -> None:
    data_dir = (tmp_path / "data").resolve()
    slow = tmp_path / "slow.pkl"
    slow.write_bytes(pickle.dumps(SlowUnpickle(120)))
    app = App(settings_for(data_dir)).start()
    try:
        with Client(app.grpc_address) as client:
            pending = client.upload_file(slow, meta("slow", workspace(client), "sklearn"), wait=False)
        assert wait_until(lambda: converters(os.getpid()) != [], timeout=30)
        running = converters(os.getpid())
    finally:
        started = time.monotonic()
        app.stop()
    assert time.monotonic() - started < 15  # not the 120 s the conversion would take
    assert alive(running) == []
    with App(settings_for(data_dir)) as again, Client(again.grpc_address) as client:
        version = client.models.GetModelVersion(model_pb2.GetModelVersionRequest(model_id=pending.model_id))
        assert version.status == model_pb2.MODEL_STATUS_ERROR and "interrupted" in version.status_reason
