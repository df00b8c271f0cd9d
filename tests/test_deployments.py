"""Deployments end to end: upload through gRPC, deploy, stream through the Flight front door."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from sklearn.kernel_ridge import KernelRidge
from support.auth import flight_connect
from support.mlp import build_mlp
from support.wait import wait_until
from xgboost import XGBClassifier

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.dataplane.routes import LocalStep, RemoteStep
from flightline.server.hosting.backend import ServerGroup
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

POSTPROCESS = """
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    # Probability-like score from the first logit, as a post-processing step would.
    return pd.DataFrame({"score": [float(row[0]) * 2.0 for row in data["output"]]})
"""


def upload(client: Client, workspace_id: int, path: Path, name: str, framework: str) -> int:
    meta = model_pb2.UploadMetadata(
        name=name, workspace_id=workspace_id, conversion=model_pb2.Conversion(framework=framework)
    )
    response = client.upload_file(path, meta)
    assert response.version.status == model_pb2.MODEL_STATUS_READY, response.version.status_reason
    return int(response.model_id)


def features(rows: int, seed: int = 0) -> tuple[np.ndarray, pa.Table]:
    values = np.random.default_rng(seed).normal(size=(rows, 29)).astype(np.float32)
    return values, pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})


@pytest.fixture
def workspace_id(client: Client) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="serving")).id)


def test_deploy_infer_describe_undeploy(app: App, client: Client, workspace_id: int, tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx")
    deployment = client.deploy(workspace_id, "fraud", upload(client, workspace_id, path, "fraud", "onnx"))
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
    # ONNX runs in the front door only: no runtime server holds a second copy.
    assert (deployment.steps[0].runtime, deployment.steps[0].location) == ("onnx", "")
    output_schema = pa.ipc.read_schema(pa.py_buffer(deployment.output_schema))
    assert output_schema.names == ["time", "in.input", "out.output", "check_failures"]

    values, table = features(1000)
    expected = ort.InferenceSession(str(path)).run(None, {"input": values})[0]
    result = infer(deployment.flight_location, "fraud", table)
    assert result.schema.names == output_schema.names and result.num_rows == 1000
    got = result.column("out.output").combine_chunks().values.to_numpy().reshape(1000, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with flight_connect(deployment.flight_location) as conn:
        info = conn.get_flight_info(flight.FlightDescriptor.for_path("fraud"))
    assert info.schema.names == output_schema.names
    assert info.endpoints == []  # runtime servers are not advertised; do_exchange at the front door
    assert app.backend.groups() == []

    listed = client.deployments.ListDeployments(
        deployment_pb2.ListDeploymentsRequest(workspace_id=workspace_id)
    )
    assert [d.name for d in listed.deployments] == ["fraud"]
    stopped = client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="fraud"))
    assert stopped.status == deployment_pb2.DEPLOYMENT_STATUS_STOPPED
    with pytest.raises(pa.ArrowKeyError, match="deployment 'fraud' not found"):
        infer(deployment.flight_location, "fraud", table)


def test_pipeline_onnx_then_python_step(app: App, client: Client, workspace_id: int, tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx")
    script = tmp_path / "post.py"
    script.write_text(POSTPROCESS)
    model = upload(client, workspace_id, path, "logits", "onnx")
    post = upload(client, workspace_id, script, "post", "python")
    deployment = client.deploy(workspace_id, "scored", model, post)
    assert [s.runtime for s in deployment.steps] == ["onnx", "python"]
    # ONNX runs inside the front door; the Python step is user code and keeps to its own process.
    live = app.deployments.live(workspace_id, "scored")
    assert live is not None
    assert [type(s) for s in live.route.steps] == [LocalStep, RemoteStep]
    values, table = features(64, seed=4)
    expected = ort.InferenceSession(str(path)).run(None, {"input": values})[0][:, 0] * 2.0
    result = infer(deployment.flight_location, "scored", table, mode="outputs")
    assert result.schema.names == ["out.score"]
    np.testing.assert_allclose(result.column("out.score").to_numpy(), expected, rtol=1e-5)


def test_deploy_refusals(client: Client, workspace_id: int, tmp_path: Path) -> None:
    model = upload(client, workspace_id, build_mlp(tmp_path / "m.onnx"), "m", "onnx")
    client.deploy(workspace_id, "taken", model)
    cases = [
        (("taken", model), grpc.StatusCode.ALREADY_EXISTS),
        (("Bad.Name", model), grpc.StatusCode.INVALID_ARGUMENT),
        (("ghost", 9999), grpc.StatusCode.NOT_FOUND),
    ]
    for (name, model_id), code in cases:
        with pytest.raises(grpc.RpcError) as refused:
            client.deploy(workspace_id, name, model_id)
        assert refused.value.code() == code, name
    broken = tmp_path / "broken.py"
    broken.write_text("def predict(x):\n    return x\n")
    meta = model_pb2.UploadMetadata(
        name="broken", workspace_id=workspace_id, conversion=model_pb2.Conversion(framework="python")
    )
    errored = client.upload_file(broken, meta)
    with pytest.raises(grpc.RpcError) as refused:
        client.deploy(workspace_id, "broken", errored.model_id)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "wallaroo_json" in (refused.value.details() or "")


def test_model_that_cannot_load_fails_the_deployment_with_reason(
    client: Client, workspace_id: int, tmp_path: Path
) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        "raise RuntimeError('missing weights file')\n\ndef wallaroo_json(data):\n    return data\n"
    )
    model = upload(client, workspace_id, script, "fails", "python")
    deployment = client.deploy(workspace_id, "fails", model)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED
    assert "missing weights file" in deployment.status_reason


@pytest.fixture
def remote_app(tmp_path: Path) -> Iterator[App]:
    """Native runtimes only in their own processes, so every step crosses to a runtime server."""
    with App(replace(settings_for(tmp_path / "data"), in_process_native=False)) as running:
        yield running


def test_runtime_killed_mid_stream_is_restarted(remote_app: App, tmp_path: Path) -> None:
    with Client(remote_app.grpc_address) as client:
        ws = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="k")).id
        model = upload(client, ws, build_mlp(tmp_path / "m.onnx"), "m", "onnx")
        deployment = client.deploy(ws, "killme", model)
    [group] = remote_app.backend.groups()
    assert group == ServerGroup("server", "shared")  # ONNX is data: it may share a runtime server
    process = remote_app.backend.server(group)
    _, table = features(100)
    with flight_connect(deployment.flight_location) as conn:
        writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path("killme"))
        writer.begin(table.schema)
        writer.write_table(table)
        assert reader.read_chunk().data.num_rows == 100
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(flight.FlightError, match="restart"):
            writer.write_table(table)
            reader.read_chunk()
    assert wait_until(lambda: process.restarts >= 1, timeout=30)
    remote_app.backend.wait_healthy(group, timeout=60)
    assert infer(deployment.flight_location, "killme", table).num_rows == 100


def test_deployments_come_back_after_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    with App(settings) as first, Client(first.grpc_address) as client:
        ws = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="r")).id
        model = upload(client, ws, build_mlp(tmp_path / "m.onnx"), "m", "onnx")
        client.deploy(ws, "durable", model)
    with App(settings) as second, Client(second.grpc_address) as client:
        again = client.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="durable"))
        assert again.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        assert infer(again.flight_location, "durable", features(10)[1]).num_rows == 10


@pytest.mark.parametrize(
    ("framework", "make", "runtime", "output"),
    [
        ("xgboost", lambda: XGBClassifier(n_estimators=8, max_depth=3), "onnx", "output"),
        # skl2onnx has no converter for KernelRidge: the original pickle runs in its own runtime process.
        ("sklearn", KernelRidge, "sklearn", "predictions"),
    ],
)
def test_pickles_are_served_converted_or_in_their_own_runtime(
    client: Client, workspace_id: int, tmp_path: Path, framework: str, make: Any, runtime: str, output: str
) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    model = make().fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 6))])
    meta = model_pb2.UploadMetadata(
        name="pickled",
        workspace_id=workspace_id,
        conversion=model_pb2.Conversion(framework=framework, input_schema=schema.serialize().to_pybytes()),
    )
    version = client.upload_file(path, meta).version
    assert (version.status, version.runtime) == (model_pb2.MODEL_STATUS_READY, runtime), version.status_reason
    assert bool(version.conversion_note) == (runtime != "onnx")
    deployment = client.deploy(workspace_id, "pickled", version.model_id)
    probe = rng.normal(size=(50, 6))
    table = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(probe.ravel()), 6)})
    result = infer(deployment.flight_location, "pickled", table, mode="outputs")
    np.testing.assert_allclose(
        result.column(f"out.{output}").to_numpy(), model.predict(probe), rtol=1e-4, atol=1e-4
    )


def test_user_code_runs_per_workspace_and_shares_nothing_with_onnx(
    app: App, client: Client, tmp_path: Path
) -> None:
    script = tmp_path / "post.py"
    script.write_text(POSTPROCESS)
    onnx_path = build_mlp(tmp_path / "mlp.onnx")
    spaces = [
        int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=n)).id)
        for n in ("tenant-a", "tenant-b")
    ]
    for ws in spaces:
        model = upload(client, ws, onnx_path, f"logits-{ws}", "onnx")
        post = upload(client, ws, script, f"post-{ws}", "python")
        assert (
            client.deploy(ws, f"scored-{ws}", model, post).status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING
        )
    # One runtime server per workspace for the Python steps; the ONNX steps in the front door only.
    assert sorted(g.trust for g in app.backend.groups()) == [f"ws-{ws}" for ws in spaces]
    for ws in spaces:
        assert sorted(app.backend.server(ServerGroup("server", f"ws-{ws}")).models) == [
            f"{ws}/scored-{ws}.1"
        ]  # keys: "<workspace>/<name>.<step>"
    client.deployments.Undeploy(deployment_pb2.UndeployRequest(name=f"scored-{spaces[0]}"))
    assert [g.trust for g in app.backend.groups()] == [f"ws-{spaces[1]}"]
    assert infer(app.flight_location, f"scored-{spaces[1]}", features(3)[1], mode="outputs").num_rows == 3
