"""A pyfunc model with a params schema and its own pinned requirement, logged and registered in a real
`mlflow server`, uploaded as `models:/<name>@<alias>` without a framework: routed to `mlflow` (the pyfunc
runtime, in its own environment), served, and queried over Flight with per-request params in the request
batch's app metadata; answers compared with `mlflow.pyfunc.load_model(...).predict(..., params=...)`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from support.auth import call_options
from support.mlflow_models import pyfunc_predict
from test_runtime_pyfunc import MODEL_CODE, PINNED, rows

from flightline.runtimes.params import params_metadata
from flightline.server.app import App
from flightline.server.client import Client
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

NAME = "pyfunc-params"


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="flightline-mlflow-pyfunc-"))  # the sandbox user reaches the envs
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def served(world: Path) -> Iterator[Client]:
    settings = replace(settings_for(world / "data"), envs_dir=str(world / "envs"))
    with App(settings) as running, Client(running.grpc_address) as client:
        yield client


def test_pyfunc_with_params_from_the_registry(served: Client, world: Path, mlflow_playground: str) -> None:
    import mlflow
    from mlflow.models import infer_signature

    url = mlflow_playground
    mlflow.set_tracking_uri(url)
    code = world / "scorer.py"
    code.write_text(MODEL_CODE)
    sample = rows(8)
    output = sample.assign(score=sample["a"], flag=np.zeros(8, "int64"), six="x")[["score", "flag", "six"]]
    signature = infer_signature(sample, output, params={"threshold": 0.5})
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), signature=signature, pip_requirements=[PINNED],
            registered_model_name=NAME,
        )  # fmt: skip
    mlflow.MlflowClient(url).set_registered_model_alias(NAME, "prod", info.registered_model_version)

    client = served
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="pyfunc-reg"))
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace.id, name="mlflow", url=url)
    )
    uploaded = client.models.UploadFromRegistry(
        model_pb2.UploadFromRegistryRequest(
            registry_id=registry.id, name="scorer", path=f"models:/{NAME}@prod", workspace_id=workspace.id
        )
    )
    version = client.wait_version(uploaded.model_id, uploaded.version.version, timeout=900)
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime) == ("mlflow", "pyfunc")
    assert version.mlflow.flavor == "python_function" and version.mlflow.alias == "prod"
    assert PINNED in version.conversion.requirements  # read from the stored directory by the plug-in
    deployment = client.deploy(workspace.id, "scorer", uploaded.model_id)

    probe = rows(16, seed=3)
    batch = pa.RecordBatch.from_pandas(probe, preserve_index=False)
    with flight.connect(deployment.flight_location) as conn:
        descriptor = flight.FlightDescriptor.for_path(deployment.flight_path, "outputs")
        writer, reader = conn.do_exchange(descriptor, options=call_options())
        writer.begin(batch.schema)
        writer.write_batch(batch)
        default = reader.read_chunk().data
        writer.write_with_metadata(batch, params_metadata({"threshold": 1.5}))
        strict = reader.read_chunk().data
        writer.done_writing()
        reader.read_all()
        writer.close()
    uri = f"models:/{NAME}/{info.registered_model_version}"
    expected_default = pyfunc_predict(url, uri, probe)
    np.testing.assert_allclose(default.column("out.score").to_numpy(), expected_default["score"].to_numpy())
    np.testing.assert_array_equal(default.column("out.flag").to_numpy(), expected_default["flag"].to_numpy())
    assert set(default.column("out.six").to_pylist()) == {PINNED.split("==")[1]}  # its own environment
    expected_strict = _predict_with_params(url, uri, probe, {"threshold": 1.5})
    np.testing.assert_array_equal(strict.column("out.flag").to_numpy(), expected_strict["flag"].to_numpy())
    assert (strict.column("out.flag").to_numpy() != default.column("out.flag").to_numpy()).any()


def _predict_with_params(url: str, uri: str, frame: object, params: dict[str, object]) -> object:
    import mlflow

    mlflow.set_tracking_uri(url)
    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(uri, dst_path=scratch)
        return mlflow.pyfunc.load_model(local).predict(frame, params=params)
