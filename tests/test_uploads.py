"""Direct uploads through ModelService.UploadModel: versions, conversion, lifecycle and refusals."""

from __future__ import annotations

import io
import pickle
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.server.app import App
from flightline.server.client import Client
from flightline.v1 import model_pb2, workspace_pb2


@pytest.fixture
def workspace_id(client: Client) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="models")).id)


def meta(name: str, workspace_id: int, framework: str, **conversion: object) -> model_pb2.UploadMetadata:
    return model_pb2.UploadMetadata(
        name=name,
        workspace_id=workspace_id,
        conversion=model_pb2.Conversion(framework=framework, **conversion),
    )


def stored_files(app: App) -> list[Path]:
    root = app.settings.data_dir / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def schema_of(data: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(data))


def test_onnx_upload_records_schemas_and_versions(client: Client, workspace_id: int, tmp_path: Path) -> None:
    path = build_mlp(tmp_path / "mlp.onnx")
    first = client.upload_file(path, meta("fraud", workspace_id, "onnx"))
    version = first.version
    assert (version.version, version.status, version.runtime) == (1, model_pb2.MODEL_STATUS_READY, "onnx")
    assert version.runtime_kind == model_pb2.RUNTIME_KIND_NATIVE
    assert schema_of(version.input_schema).field("input").type == pa.list_(pa.float32(), 29)
    assert version.size_bytes == path.stat().st_size and version.source == "upload:mlp.onnx"

    second = client.upload_file(build_mlp(tmp_path / "v2.onnx", seed=3), meta("fraud", workspace_id, "onnx"))
    assert second.model_id == first.model_id and second.version.version == 2
    model = client.models.GetModel(model_pb2.GetModelRequest(model_id=first.model_id))
    assert model.latest_version.version == 2 and model.workspace_id == workspace_id
    versions = client.models.ListModelVersions(model_pb2.ListModelVersionsRequest(model_id=first.model_id))
    assert [v.version for v in versions.versions] == [1, 2]
    listed = client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id))
    assert [m.name for m in listed.models] == ["fraud"]


def test_sklearn_pickle_is_converted_to_onnx(client: Client, workspace_id: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    version = client.upload_file(path, meta("iris", workspace_id, "sklearn")).version
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.runtime == "onnx" and version.sha256 != version.original_sha256
    assert "predictions" in schema_of(version.output_schema).names


def test_python_step_without_entry_point_is_an_error_with_reason(
    client: Client, workspace_id: int, tmp_path: Path
) -> None:
    path = tmp_path / "step.py"
    path.write_text("def predict(data):\n    return data\n")
    version = client.upload_file(path, meta("post", workspace_id, "python")).version
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "wallaroo_json" in version.status_reason


def test_frameworks_catalog(client: Client) -> None:
    frameworks = {
        f.name: f for f in client.models.ListFrameworks(model_pb2.ListFrameworksRequest()).frameworks
    }
    assert len([n for n in frameworks if n.startswith("hugging-face-")]) == 16
    assert {
        "onnx",
        "tensorflow",
        "python",
        "keras",
        "sklearn",
        "pytorch",
        "xgboost",
        "custom",
        "mlflow",
    } <= set(frameworks)
    assert frameworks["onnx"].runtime_kind == model_pb2.RUNTIME_KIND_NATIVE
    assert frameworks["mlflow"].runtime_kind == model_pb2.RUNTIME_KIND_CONTAINERIZED
    assert frameworks["sklearn"].converts_to_onnx
    schema = schema_of(frameworks["hugging-face-text-classification"].default_input_schema)
    assert schema.field("inputs").type == pa.string()


@pytest.mark.parametrize(
    ("name", "framework", "schema", "expected"),
    [
        ("Bad_Name", "onnx", b"", "DNS"),
        ("ok-name", "caffe", b"", "sklearn"),  # the message lists the valid frameworks
        ("ok-name", "onnx", b"not a schema", "Arrow"),
    ],
)
def test_bad_requests_are_refused_and_store_nothing(
    app: App,
    client: Client,
    workspace_id: int,
    tmp_path: Path,
    name: str,
    framework: str,
    schema: bytes,
    expected: str,
) -> None:
    path = build_mlp(tmp_path / "m.onnx")
    with pytest.raises(grpc.RpcError) as refused:
        client.upload_file(path, meta(name, workspace_id, framework, input_schema=schema))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (refused.value.details() or "")
    assert stored_files(app) == []


def test_unknown_workspace_is_not_found(client: Client, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        client.upload_file(build_mlp(tmp_path / "m.onnx"), meta("m", 4242, "onnx"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_truncated_upload_stores_nothing(app: App, client: Client, workspace_id: int, tmp_path: Path) -> None:
    data = build_mlp(tmp_path / "m.onnx").read_bytes()
    head = meta("cut", workspace_id, "onnx")
    head.size_bytes = len(data)
    requests = [model_pb2.UploadModelRequest(metadata=head), model_pb2.UploadModelRequest(chunk=data[:100])]
    with pytest.raises(grpc.RpcError) as refused:
        client.models.UploadModel(iter(requests))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in (refused.value.details() or "")
    assert stored_files(app) == []
    assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models


def test_cancelled_upload_stores_nothing(app: App, client: Client, workspace_id: int) -> None:
    sent, release = threading.Event(), threading.Event()

    def requests() -> Iterator[model_pb2.UploadModelRequest]:
        head = meta("gone", workspace_id, "onnx")
        head.size_bytes = 2 << 20
        yield model_pb2.UploadModelRequest(metadata=head)
        yield model_pb2.UploadModelRequest(chunk=b"x" * (1 << 20))
        sent.set()
        release.wait(10)

    future = client.models.UploadModel.future(requests())
    assert sent.wait(10)
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    # The server notices the cancellation asynchronously; its temporary file must then go away.
    assert wait_until(lambda: stored_files(app) == [], timeout=10)
    assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (_zip({"../../etc/evil.py": b"x = 1"}), "escapes"),
        (_zip({"model/predict.py": b"x = 1"})[:-30], "zip"),
    ],
)
def test_bad_archives_are_refused(
    app: App, client: Client, workspace_id: int, tmp_path: Path, payload: bytes, expected: str
) -> None:
    path = tmp_path / "byop.zip"
    path.write_bytes(payload)
    with pytest.raises(grpc.RpcError) as refused:
        client.upload_file(path, meta("byop", workspace_id, "custom"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (refused.value.details() or "")
    assert stored_files(app) == []


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    from conftest import settings_for

    settings = settings_for(tmp_path / "data")
    with App(settings) as first, Client(first.grpc_address) as c:
        ws = c.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="kept"))
        uploaded = c.upload_file(build_mlp(tmp_path / "m.onnx"), meta("kept", ws.id, "onnx"))
    with App(settings) as second, Client(second.grpc_address) as c:
        assert c.workspaces.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=ws.id)).name == "kept"
        again = c.models.GetModelVersion(model_pb2.GetModelVersionRequest(model_id=uploaded.model_id))
        assert again.sha256 == uploaded.version.sha256 and again.status == model_pb2.MODEL_STATUS_READY
        assert second.artifacts.exists(again.sha256)


def test_declared_schemas_fix_dynamic_onnx_dimensions(
    client: Client, workspace_id: int, tmp_path: Path
) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
    )
    path = tmp_path / "relu.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    declared_in = pa.schema([pa.field("x", pa.list_(pa.float32(), 4))])
    declared_out = pa.schema([pa.field("y", pa.list_(pa.float32(), 4))])
    version = client.upload_file(
        path,
        meta(
            "relu",
            workspace_id,
            "onnx",
            input_schema=declared_in.serialize().to_pybytes(),
            output_schema=declared_out.serialize().to_pybytes(),
        ),
    ).version
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert schema_of(version.input_schema).equals(declared_in)
    assert schema_of(version.output_schema).equals(declared_out)


def test_refused_upload_keeps_bytes_an_earlier_version_stored(
    app: App, client: Client, workspace_id: int
) -> None:
    data = b"def wallaroo_json(data):\n    return data\n"
    step, byop = meta("step", workspace_id, "python"), meta("byop", workspace_id, "custom")
    step.size_bytes = byop.size_bytes = len(data)
    first = client.models.UploadModel(
        iter([model_pb2.UploadModelRequest(metadata=step), model_pb2.UploadModelRequest(chunk=data)])
    )
    assert client.wait_version(first.model_id, 1).status == model_pb2.MODEL_STATUS_READY
    # The same bytes as a "custom" archive are refused (not a zip), without a sha256 declared.
    with pytest.raises(grpc.RpcError) as refused:
        client.models.UploadModel(
            iter([model_pb2.UploadModelRequest(metadata=byop), model_pb2.UploadModelRequest(chunk=data)])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert app.artifacts.exists(first.version.sha256)


@pytest.mark.parametrize("framework", ["hugging-face-text-classification"])
def test_catalogued_frameworks_without_a_runtime_say_so(
    client: Client, workspace_id: int, tmp_path: Path, framework: str
) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(_zip({"model/config.json": b"{}"}))
    version = client.upload_file(path, meta("later", workspace_id, framework)).version
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "not built yet" in version.status_reason
    assert version.sha256 == version.original_sha256  # the upload itself is kept
