"""Logs and metrics of real servers: /metrics scraped over HTTP before and after real requests, JSON log
lines read from a real `flightline serve`, and the version in gRPC metadata, the Flight `version` action
and `flightline --version`."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from support.auth import flight_connect
from support.mlp import build_mlp
from support.wait import wait_until

from flightline import __version__
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.observability import DISABLED, VERSION_HEADER, configure_logging
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

TOKEN = "dapi-observability-secret-7f3a9c"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def features(rows: int) -> pa.Table:
    values = np.random.default_rng(0).normal(size=(rows, 29)).astype(np.float32)
    return pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})


def upload(client: Client, workspace_id: int, path: Path, name: str) -> int:
    meta = model_pb2.UploadMetadata(
        name=name, workspace_id=workspace_id, conversion=model_pb2.Conversion(framework="onnx")
    )
    response = client.upload_file(path, meta)
    assert response.version.status == model_pb2.MODEL_STATUS_READY, response.version.status_reason
    return int(response.model_id)


def test_metrics_move_with_rpcs_uploads_deploys_and_streams(
    app: App, client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert app.metrics_port > 0
    before = scrape(app.metrics_port)
    assert value(before, "flightline_build_info", version=__version__) == 1

    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="metrics"))
    with pytest.raises(grpc.RpcError) as missing:
        client.workspaces.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=987654))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    path = build_mlp(tmp_path / "mlp.onnx")
    with caplog.at_level(logging.INFO, logger="flightline.events"):
        model_id = upload(client, workspace.id, path, "watched")
        deployment = client.deploy(workspace.id, "watched", model_id)
        result = infer(deployment.flight_location, "watched", features(1000))
        assert result.num_rows == 1000
        with pytest.raises(pa.ArrowInvalid):  # a stream the first step refuses: no `input` column
            infer(deployment.flight_location, "watched", pa.table({"wrong": [1.0]}))
    after = scrape(app.metrics_port)

    create, get = (
        "flightline.v1.WorkspaceService/CreateWorkspace",
        "flightline.v1.WorkspaceService/GetWorkspace",
    )
    assert moved(before, after, "flightline_grpc_requests_total", method=create, code="OK") == 1
    assert moved(before, after, "flightline_grpc_requests_total", method=get, code="NOT_FOUND") == 1
    assert moved(before, after, "flightline_grpc_errors_total", method=get, code="NOT_FOUND") == 1
    assert moved(before, after, "flightline_grpc_errors_total", method=create, code="OK") == 0
    assert moved(before, after, "flightline_grpc_request_duration_seconds_count", method=create) == 1
    upload_method = "flightline.v1.ModelService/UploadModel"
    assert moved(before, after, "flightline_grpc_requests_total", method=upload_method, code="OK") == 1

    assert (
        moved(before, after, "flightline_uploads_total", framework="onnx", runtime="onnx", status="ready")
        == 1
    )
    assert moved(before, after, "flightline_upload_bytes_total", framework="onnx") == path.stat().st_size
    assert moved(before, after, "flightline_model_preparation_seconds_count", framework="onnx") == 1
    assert moved(before, after, "flightline_deploys_total", status="running") == 1
    # ONNX runs inside the front door: deploying it starts no runtime server (the restart test counts one).
    assert moved(before, after, "flightline_runtime_starts_total", runtime="server") == 0

    assert moved(before, after, "flightline_flight_streams_total", deployment="watched", status="ok") == 1
    assert (
        moved(
            before, after, "flightline_flight_streams_total", deployment="watched", status="invalid_argument"
        )
        == 1
    )
    assert moved(before, after, "flightline_flight_rows_total", deployment="watched") == 1001
    assert moved(before, after, "flightline_flight_batches_total", deployment="watched") >= 2
    assert moved(before, after, "flightline_flight_stream_duration_seconds_count", deployment="watched") == 2

    # The event lines, with their fields as record attributes (what the JSON formatter emits).
    by_event: dict[str, list[logging.LogRecord]] = {}
    for record in caplog.records:
        by_event.setdefault(getattr(record, "event", ""), []).append(record)
    (uploaded,) = by_event["upload"]
    shown = {k: getattr(uploaded, k) for k in ("model", "framework", "runtime", "status")}
    assert shown == {"model": "watched", "framework": "onnx", "runtime": "onnx", "status": "ready"}
    assert (
        uploaded.bytes == path.stat().st_size and len(uploaded.sha256) == 64 and uploaded.conversion_ms >= 0
    )
    (deployed,) = by_event["deploy"]
    assert (deployed.deployment, deployed.status, deployed.steps) == ("watched", "running", f"{model_id}:1")
    ok, refused = by_event["flight_stream"]
    assert (ok.deployment, ok.rows, ok.status) == ("watched", 1000, "ok") and ok.duration_ms > 0
    assert (refused.rows, refused.status) == (1, "invalid_argument")
    assert "runtime_start" not in by_event  # ONNX runs in the front door
    rpcs = [r for r in by_event["rpc"] if r.method == upload_method]
    assert len(rpcs) == 1 and rpcs[0].workspace_id == workspace.id and rpcs[0].status == "OK"


def test_unknown_deployments_and_methods_add_no_labels(app: App, client: Client) -> None:
    with pytest.raises(pa.ArrowKeyError):
        infer(app.flight_location, "no-such-deployment", features(3))
    with pytest.raises(grpc.RpcError) as unknown:
        client.channel.unary_unary("/flightline.v1.Nope/Nothing")(b"")
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    names = {labels for _, labels in scrape(app.metrics_port)}
    assert not any(("deployment", "no-such-deployment") in labels for labels in names)
    assert not any(value.startswith("flightline.v1.Nope") for labels in names for _, value in labels)


def test_version_in_grpc_metadata_and_flight_action(app: App, client: Client) -> None:
    _, call = client.workspaces.ListWorkspaces.with_call(workspace_pb2.ListWorkspacesRequest())
    assert (VERSION_HEADER, __version__) in call.initial_metadata()
    with pytest.raises(grpc.RpcError) as failed:  # errors carry it too
        client.workspaces.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=5))
    assert (VERSION_HEADER, __version__) in failed.value.initial_metadata()
    with flight_connect(app.flight_location) as conn:
        assert [r.body.to_pybytes() for r in conn.do_action(flight.Action("version", b""))] == [
            __version__.encode()
        ]
        assert [r.body.to_pybytes() for r in conn.do_action(flight.Action("healthcheck", b""))] == [b"ok"]
        assert "version" in {a.type for a in conn.list_actions()}


def test_health_per_service_and_streamed_rpcs_are_observed(app: App, client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "flightline.v1.ModelService", "flightline.v1.DeploymentService"):
        reply, call = health.Check.with_call(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (VERSION_HEADER, __version__) in call.initial_metadata()
    watch = health.Watch(health_pb2.HealthCheckRequest(service="flightline.v1.ModelService"))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    assert (VERSION_HEADER, __version__) in watch.initial_metadata()
    watch.cancel()  # a response stream is observed when it ends, here by the client going away
    method = "grpc.health.v1.Health/Watch"
    assert wait_until(
        lambda: (
            value(scrape(app.metrics_port), "flightline_grpc_requests_total", method=method, code="CANCELLED")
            == 1
        ),
        timeout=10,
    )


@pytest.fixture
def remote_app(tmp_path: Path) -> Iterator[App]:
    """Every step in its own runtime process, so there is one to kill."""
    with App(replace(settings_for(tmp_path / "data"), in_process_native=False)) as running:
        yield running


def test_runtime_exit_and_restart_are_counted_and_logged(
    remote_app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(remote_app.grpc_address) as client:
        ws = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="k")).id
        deployment = client.deploy(ws, "crashy", upload(client, ws, build_mlp(tmp_path / "m.onnx"), "m"))
    before = scrape(remote_app.metrics_port)
    backend = remote_app.backend
    assert value(before, "flightline_runtime_starts_total", runtime="server") == 1
    (group,) = backend.groups()  # the one runtime server, hosting the deployment's step
    with caplog.at_level(logging.INFO, logger="flightline.events"):
        os.kill(backend.server(group).pid, signal.SIGKILL)
        assert wait_until(lambda: backend.server(group).restarts >= 1, timeout=30)
        backend.wait_healthy(group, timeout=60)
        assert wait_until(
            lambda: (
                moved(
                    before,
                    scrape(remote_app.metrics_port),
                    "flightline_runtime_restarts_total",
                    runtime=group.environment,
                )
                == 1
            ),
            timeout=10,
        )
    after = scrape(remote_app.metrics_port)
    assert moved(before, after, "flightline_runtime_exits_total", runtime=group.environment) == 1
    events = {getattr(r, "event", ""): r for r in caplog.records}
    assert events["runtime_restart"].key == group.name and events["runtime_restart"].pid > 0
    assert events["runtime_exit"].key == group.name and events["runtime_exit"].exit_code == -signal.SIGKILL
    assert events["runtime_restart"].restarts == 1
    assert infer(deployment.flight_location, "crashy", features(5)).num_rows == 5


def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    with App(replace(settings_for(tmp_path / "data"), metrics_port=DISABLED)) as running:
        assert running.metrics_port == DISABLED
        assert running.observer.metrics._server is None


def test_text_format_puts_fields_after_the_message() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("text", stream=out)
        logging.getLogger("flightline.events").info("hello", extra={"method": "M", "duration_ms": 1.5})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert out.getvalue().rstrip().endswith("flightline.events: hello method=M duration_ms=1.5")
    with pytest.raises(ValueError, match="log format must be one of"):
        configure_logging("xml")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flightline.server.cli", *args]


def test_version_flag() -> None:
    done = subprocess.run(_cli("--version"), capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == __version__


def test_serve_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    done = subprocess.run(
        _cli("serve", "--data-dir", str(tmp_path), "--log-format", "xml"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "log format must be one of" in done.stderr


def test_serve_logs_one_json_object_per_line_without_tokens(tmp_path: Path) -> None:
    # The flag wins over the environment.
    env = {**os.environ, "FLIGHTLINE_LOG_FORMAT": "text", "FLIGHTLINE_REGISTRY_TIMEOUT": "2"}
    ports = ("--grpc-port", "0", "--flight-port", "0", "--metrics-port", "0", "--log-format", "json")
    server = subprocess.Popen(
        _cli("serve", "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", *ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        assert ready.startswith("FLIGHTLINE_SERVING "), ready
        fields = dict(part.split("=", 1) for part in ready.split()[1:])
        with Client(fields["grpc"]) as client:
            ws = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="logs")).id
            registry = client.registries.CreateRegistry(
                registry_pb2.CreateRegistryRequest(
                    workspace_id=ws, name="secret", url="http://127.0.0.1:1", token=TOKEN
                )
            )
            with pytest.raises(grpc.RpcError):  # nothing listens there: the call fails, and is logged
                client.registries.ListRegistryModels(
                    registry_pb2.ListRegistryModelsRequest(registry_id=registry.id)
                )
        scraped = scrape(int(fields["metrics"]))
        create = "flightline.v1.WorkspaceService/CreateWorkspace"
        assert value(scraped, "flightline_grpc_requests_total", method=create, code="OK") == 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    rpcs = {line["method"]: line for line in lines if line.get("event") == "rpc"}
    created = rpcs[create]
    assert created["status"] == "OK" and created["level"] == "INFO" and created["duration_ms"] >= 0
    assert created["logger"] == "flightline.events" and "time" in created and "message" in created
    registered = rpcs["flightline.v1.RegistryService/CreateRegistry"]
    assert registered["workspace_id"] == ws and registered["status"] == "OK"
    assert rpcs["flightline.v1.RegistryService/ListRegistryModels"]["status"] != "OK"
    assert TOKEN not in stderr
