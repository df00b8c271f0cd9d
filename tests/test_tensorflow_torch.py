"""TensorFlow, Keras and TorchScript end to end, in every artifact form the seed names: models built by
the frameworks themselves (tests/support/tf_models.py, torch_models.py, run by the family environments'
interpreters, since the test venv has neither), uploaded through gRPC, prepared in the family
environment, deployed and queried over Flight, and compared with what the framework answered
in-process on the same rows. Bad artifacts end ERROR with a reason a person can act on.

Marked `families` (`-m "not families"` skips them locally); CI runs them, `.ci/setup` builds both
environments. The environments are the server's default cache, where `flightline runtimes install`
puts them; a missing one is built here (from uv's cache: ~30 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import settings_for

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.environments import Environments
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

pytestmark = pytest.mark.families

SUPPORT = Path(__file__).parent / "support"
READY = model_pb2.MODEL_STATUS_READY
ERROR = model_pb2.MODEL_STATUS_ERROR
KERAS_INPUT = pa.schema([pa.field("inputs", pa.list_(pa.float32(), 8))])
TORCH_INPUT = pa.schema([pa.field("inputs", pa.list_(pa.float32(), 4))])


def _run(python: Path, *args: str, **env: str) -> None:
    done = subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="flightline-tftorch-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def models(world: Path) -> Path:
    """Every test model, written by the frameworks, with their in-process answers."""
    environments = Environments()
    tensorflow = environments.family("tensorflow").python
    torch = environments.family("torch").python
    out = world / "models"
    _run(tensorflow, str(SUPPORT / "tf_models.py"), str(out))
    _run(tensorflow, str(SUPPORT / "tf_models.py"), str(out), "--legacy", TF_USE_LEGACY_KERAS="1")
    _run(torch, str(SUPPORT / "torch_models.py"), str(out))
    return out


@pytest.fixture(scope="module")
def app(world: Path, models: Path) -> Iterator[App]:
    with App(settings_for(world / "data")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app: App) -> Iterator[Client]:
    with Client(app.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def workspace(client: Client) -> int:
    created = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="frameworks"))
    return int(created.id)


def upload(
    client: Client, workspace: int, path: Path, name: str, framework: str, schema: pa.Schema | None = None
) -> model_pb2.ModelVersion:
    conversion = model_pb2.Conversion(framework=framework)
    if schema is not None:
        conversion.input_schema = schema.serialize().to_pybytes()
    meta = model_pb2.UploadMetadata(name=name, workspace_id=workspace, conversion=conversion)
    return client.upload_file(path, meta, timeout=600).version


def rows(models: Path, name: str) -> tuple[pa.Table, pa.Table]:
    read = [pa.ipc.open_file(str(models / f"{name}.{part}.arrow")).read_all() for part in ("in", "out")]
    return read[0], read[1]


def served(client: Client, workspace: int, version: model_pb2.ModelVersion, table: pa.Table) -> pa.Table:
    """Deploys the version, answers `table` over Flight at the front door, undeploys."""
    name = f"d-{version.model_name}"
    deployment = client.deploy(workspace, name, version.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    try:
        return infer(deployment.flight_location, name, table, mode="outputs")
    finally:
        client.deployments.Undeploy(deployment_pb2.UndeployRequest(name=name))


def assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == [f"out.{name}" for name in want.column_names]
    for name in want.column_names:
        have, expected = got.column(f"out.{name}"), want.column(name)
        if pa.types.is_string(expected.type):
            assert have.to_pylist() == expected.to_pylist(), name
        else:
            np.testing.assert_allclose(
                np.array(have.to_pylist()), np.array(expected.to_pylist()), rtol=1e-4, atol=1e-5
            )


@pytest.mark.parametrize(
    ("name", "file", "route"),
    [
        ("keras3-h5", "keras3.h5", "Keras 3 HDF5 converted by tf2onnx's tf.function route"),
        ("keras3-keras", "keras3.keras", "Keras 3 .keras converted by tf2onnx's tf.function route"),
        ("keras3-export", "keras3_export.zip", "SavedModel converted by tf2onnx's SavedModel route"),
        ("keras2-h5", "keras2.h5", "Keras 2 HDF5 converted by tf2onnx's from_keras route"),
        ("keras2-saved", "keras2_saved.zip", "Keras 2 SavedModel converted by tf2onnx's from_keras route"),
    ],
)
def test_keras_in_every_form_is_converted_to_onnx_and_answers_as_keras(
    client: Client, workspace: int, models: Path, name: str, file: str, route: str
) -> None:
    version = upload(client, workspace, models / file, name, "keras", KERAS_INPUT)
    assert version.status == READY, version.status_reason
    assert version.runtime == "onnx" and version.conversion_note.startswith(route), version.conversion_note
    if "from_keras" not in route:  # why the earlier routes did not win is on record too
        assert "(from_keras: " in version.conversion_note
    inputs, want = rows(models, name.replace("-", "_"))
    assert_same(served(client, workspace, version, inputs), want)


def test_keras_that_tf2onnx_cannot_convert_is_served_by_the_tensorflow_runtime(
    client: Client, workspace: int, models: Path
) -> None:
    schema = pa.schema([pa.field("text", pa.string())])
    version = upload(client, workspace, models / "keras3_hashing.keras", "keras-hashing", "keras", schema)
    assert version.status == READY, version.status_reason
    assert version.runtime == "tensorflow", version.conversion_note
    note = version.conversion_note
    assert (
        note.startswith("Keras 3 .keras not converted to ONNX (from_keras: ")
        and "StringToHashBucketFast" in note
    )
    assert (
        "tf.function: " in note
        and "SavedModel: " in note
        and note.endswith("served by the TensorFlow runtime")
    )
    assert version.sha256 != version.original_sha256  # the SavedModel exported at preparation is served
    inputs, want = rows(models, "keras3_hashing")
    assert_same(served(client, workspace, version, inputs), want)


def test_a_tensorflow_savedmodel_with_a_string_input_is_served_natively_with_derived_schemas(
    client: Client, workspace: int, models: Path
) -> None:
    version = upload(client, workspace, models / "module.zip", "module", "tensorflow")
    assert version.status == READY, version.status_reason
    assert (version.runtime, version.conversion_note) == ("tensorflow", "")
    schema = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
    # From serving_default: names, dtypes and fixed per-row shapes; strings are Arrow strings.
    assert schema == pa.schema([("features", pa.list_(pa.float32(), 8)), ("label", pa.string())])
    outputs = pa.ipc.read_schema(pa.py_buffer(version.output_schema))
    assert outputs == pa.schema([("score", pa.list_(pa.float32(), 2)), ("shout", pa.string())])
    inputs, want = rows(models, "module")
    assert_same(served(client, workspace, version, inputs), want)


def test_a_given_schema_that_does_not_fit_the_signature_is_an_error_naming_the_column(
    client: Client, workspace: int, models: Path
) -> None:
    wrong = pa.schema([("features", pa.list_(pa.float32(), 5)), ("label", pa.string())])
    version = upload(client, workspace, models / "module.zip", "module-wrong", "tensorflow", wrong)
    assert version.status == ERROR
    assert "features" in version.status_reason and "[8]" in version.status_reason, version.status_reason


@pytest.mark.parametrize("name", ["scripted", "traced"])
def test_torchscript_with_a_float32_schema_is_converted_to_onnx(
    client: Client, workspace: int, models: Path, name: str
) -> None:
    version = upload(client, workspace, models / f"{name}.pt", f"torch-{name}", "pytorch", TORCH_INPUT)
    assert version.status == READY, version.status_reason
    assert version.runtime == "onnx" and "torch.onnx.export" in version.conversion_note
    inputs, want = rows(models, name)
    assert_same(served(client, workspace, version, inputs), want)


@pytest.mark.parametrize(
    ("name", "schema", "why"),
    [
        ("unexportable", TORCH_INPUT, "aten::special_erfcx"),
        (
            "double",
            pa.schema([pa.field("inputs", pa.list_(pa.float64(), 4))]),
            "the floats must be pyarrow.float32()",
        ),
    ],
)
def test_torchscript_that_does_not_convert_is_served_by_the_torchscript_runtime(
    client: Client, workspace: int, models: Path, name: str, schema: pa.Schema, why: str
) -> None:
    version = upload(client, workspace, models / f"{name}.pt", f"torch-{name}", "pytorch", schema)
    assert version.status == READY, version.status_reason
    assert version.runtime == "torchscript", version.conversion_note
    assert why in version.conversion_note and "served by the TorchScript runtime" in version.conversion_note
    inputs, want = rows(models, name)
    assert_same(served(client, workspace, version, inputs), want)


def _without_saved_model_pb(models: Path) -> Path:
    broken = models / "no_pb.zip"
    with zipfile.ZipFile(models / "module.zip") as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("saved_model.pb"):
                target.writestr(item, source.read(item))
    return broken


def _truncated_h5(models: Path) -> Path:
    data = (models / "keras3.h5").read_bytes()
    truncated = models / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    return truncated


@pytest.mark.parametrize(
    ("name", "framework", "make", "schema", "reason"),
    [
        ("no-pb", "tensorflow", _without_saved_model_pb, None, "holds no single saved_model.pb"),
        ("truncated", "keras", _truncated_h5, KERAS_INPUT, "not a readable HDF5 file"),
        ("state-dict", "pytorch", lambda m: m / "state_dict.pt", TORCH_INPUT, "not a TorchScript module"),
    ],
)
def test_bad_artifacts_end_in_error_with_a_clear_reason(
    client: Client, workspace: int, models: Path, name: str, framework: str, make, schema, reason: str
) -> None:
    version = upload(client, workspace, make(models), name, framework, schema)
    assert version.status == ERROR
    assert reason in version.status_reason, version.status_reason
    assert "Traceback" not in version.status_reason and str(models) not in version.status_reason
