"""RegistryService and UploadFromRegistry over gRPC, against a real `mlflow server` subprocess."""

from __future__ import annotations

import hashlib
import pickle
import socket
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from support.dbfs_server import DbfsRegistry, dbfs_server

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

Registry = tuple[str, dict[str, Any]]


def new_workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def connect(client: Client, workspace_id: int, url: str, token: str = "") -> registry_pb2.Registry:
    request = registry_pb2.CreateRegistryRequest(
        workspace_id=workspace_id, name="mlflow", url=url, token=token
    )
    registry: registry_pb2.Registry = client.registries.CreateRegistry(request)
    return registry


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_registry_links_and_secrecy(client: Client) -> None:
    first, second = new_workspace(client, "a"), new_workspace(client, "b")
    registry = connect(client, first, "http://127.0.0.1:5000", token="dapi-secret")
    assert registry.has_token and registry.workspace_ids == [first]
    fetched = client.registries.GetRegistry(registry_pb2.GetRegistryRequest(registry_id=registry.id))
    assert "dapi-secret" not in str(fetched) and fetched.url == "http://127.0.0.1:5000"

    link = registry_pb2.AttachRegistryRequest(registry_id=registry.id, workspace_id=second)
    assert client.registries.AttachRegistry(link).workspace_id == second
    listed = client.registries.ListRegistries(registry_pb2.ListRegistriesRequest(workspace_id=second))
    assert [r.id for r in listed.registries] == [registry.id]

    unlink = registry_pb2.DetachRegistryRequest(registry_id=registry.id, workspace_id=second)
    client.registries.DetachRegistry(unlink)
    assert not client.registries.ListRegistries(
        registry_pb2.ListRegistriesRequest(workspace_id=second)
    ).registries
    with pytest.raises(grpc.RpcError) as again:
        client.registries.DetachRegistry(unlink)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    # Removing from a workspace keeps the registry itself.
    assert (
        client.registries.GetRegistry(registry_pb2.GetRegistryRequest(registry_id=registry.id)).id
        == registry.id
    )


@pytest.mark.parametrize(
    ("workspace", "url", "code"),
    [
        (True, "ftp://example", grpc.StatusCode.INVALID_ARGUMENT),
        (True, "not a url", grpc.StatusCode.INVALID_ARGUMENT),
        (True, "https://user:secret@adb-1.azuredatabricks.net", grpc.StatusCode.INVALID_ARGUMENT),
        (False, "http://127.0.0.1:5000", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_create_registry_refusals(client: Client, workspace: bool, url: str, code: grpc.StatusCode) -> None:
    workspace_id = new_workspace(client, "w") if workspace else 777
    with pytest.raises(grpc.RpcError) as refused:
        connect(client, workspace_id, url)
    assert refused.value.code() == code


def test_unknown_registry_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        client.registries.GetRegistry(
            registry_pb2.GetRegistryRequest(registry_id="0b7c5d0e-0000-4000-8000-000000000000")
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_browse_models_versions_and_artifacts(client: Client, mlflow_registry: Registry) -> None:
    url, logged = mlflow_registry
    registry = connect(client, new_workspace(client, "browse"), url)
    names, token, pages = [], "", 0
    while True:
        page = client.registries.ListRegistryModels(
            registry_pb2.ListRegistryModelsRequest(registry_id=registry.id, page_size=5, page_token=token)
        )
        names += [m.name for m in page.registered_models]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages >= 2 and sorted(names) == logged["names"]

    multi = logged["multi_version_model"]
    page = client.registries.ListRegistryModelVersions(
        registry_pb2.ListRegistryModelVersionsRequest(registry_id=registry.id, name=multi)
    )
    assert sorted(v.version for v in page.versions) == ["1", "2", "3"]
    assert all(v.status == "READY" and v.run_id and v.create_time.seconds > 0 for v in page.versions)

    artifacts = client.registries.ListModelVersionArtifacts(
        registry_pb2.ListModelVersionArtifactsRequest(registry_id=registry.id, name=multi, version="2")
    ).artifacts
    pickles = [a for a in artifacts if a.path.endswith("model.pkl")]
    assert len(pickles) == 1 and pickles[0].file_size > 0 and not pickles[0].is_dir


def test_upload_from_registry_then_serve(client: Client, mlflow_registry: Registry) -> None:
    url, logged = mlflow_registry
    workspace_id = new_workspace(client, "serve")
    registry = connect(client, workspace_id, url)
    multi = logged["multi_version_model"]
    artifacts = client.registries.ListModelVersionArtifacts(
        registry_pb2.ListModelVersionArtifactsRequest(registry_id=registry.id, name=multi, version="2")
    ).artifacts
    pickle_path = next(a.path for a in artifacts if a.path.endswith("model.pkl"))
    schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 4))])
    request = model_pb2.UploadFromRegistryRequest(
        registry_id=registry.id,
        name="iris",
        path=pickle_path,
        workspace_id=workspace_id,
        visibility=model_pb2.VISIBILITY_PUBLIC,
        conversion=model_pb2.Conversion(framework="sklearn", input_schema=schema.serialize().to_pybytes()),
    )
    uploaded = client.models.UploadFromRegistry(request)
    assert uploaded.version.status == model_pb2.MODEL_STATUS_PENDING_CONVERSION  # prepared after the RPC
    version = client.wait_version(uploaded.model_id, uploaded.version.version)
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.runtime == "onnx" and version.source.startswith(f"registry:{registry.id}:")
    again = client.models.UploadFromRegistry(request)
    assert again.version.version == 2  # same name: a new version
    client.wait_version(again.model_id, 2)  # deploy takes the latest, so it must be READY

    deployment = client.deploy(workspace_id, "iris", uploaded.model_id)
    probe = np.asarray(logged["probe"], dtype=np.float64)
    table = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(probe.ravel()), 4)})
    result = infer(deployment.flight_location, "iris", table)
    expected = logged["predictions"][(multi, "2")]
    np.testing.assert_array_equal(result.column("out.predictions").to_numpy(), expected)


def test_registry_down_is_unavailable_and_stores_nothing(app: App, client: Client) -> None:
    workspace_id = new_workspace(client, "down")
    registry = connect(client, workspace_id, closed_port_url())
    with pytest.raises(grpc.RpcError) as listing:
        client.registries.ListRegistryModels(registry_pb2.ListRegistryModelsRequest(registry_id=registry.id))
    assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in (listing.value.details() or "")
    with pytest.raises(grpc.RpcError) as upload:
        client.models.UploadFromRegistry(
            model_pb2.UploadFromRegistryRequest(
                registry_id=registry.id,
                name="never",
                path="models:/x/1",
                workspace_id=workspace_id,
                conversion=model_pb2.Conversion(framework="sklearn"),
            )
        )
    assert upload.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models
    artifacts = Path(app.settings.data_dir) / "artifacts"
    assert not artifacts.exists() or not [p for p in artifacts.rglob("*") if p.is_file()]


def test_unknown_registry_model_is_not_found(client: Client, mlflow_registry: Registry) -> None:
    url, _ = mlflow_registry
    registry = connect(client, new_workspace(client, "nf"), url)
    with pytest.raises(grpc.RpcError) as refused:
        client.registries.ListModelVersionArtifacts(
            registry_pb2.ListModelVersionArtifactsRequest(
                registry_id=registry.id, name="no-such-model", version="1"
            )
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_databricks_token_over_grpc(app: App, client: Client, tmp_path: Path) -> None:
    """Against a stand-in for Azure Databricks (its REST + DBFS calls), which cannot run here."""
    x = np.random.default_rng(0).normal(size=(100, 4))
    model = LogisticRegression().fit(x, (x[:, 1] > 0).astype(int))
    files = {"MLmodel": b"flavors: {}\n", "model.pkl": pickle.dumps(model)}
    with dbfs_server(DbfsRegistry(token="dapi-right", model="wine", files=files)) as databricks:
        workspace_id = new_workspace(client, "dbx")
        good = connect(client, workspace_id, databricks.url, token="dapi-right")
        bad = connect(client, workspace_id, databricks.url, token="dapi-wrong")
        artifacts = client.registries.ListModelVersionArtifacts(
            registry_pb2.ListModelVersionArtifactsRequest(registry_id=good.id, name="wine", version="1")
        ).artifacts
        pkl = next(a for a in artifacts if a.path.endswith("model.pkl"))
        assert pkl.full_path.startswith(f"{databricks.url}/api/2.0/dbfs/read?path=")
        request = model_pb2.UploadFromRegistryRequest(
            registry_id=bad.id,
            name="wine",
            path=pkl.path,
            workspace_id=workspace_id,
            conversion=model_pb2.Conversion(framework="sklearn"),
        )
        with pytest.raises(grpc.RpcError) as refused:
            client.models.UploadFromRegistry(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models
        request.registry_id = good.id
        uploaded = client.models.UploadFromRegistry(request)
        version = client.wait_version(uploaded.model_id, uploaded.version.version)
    assert version.status == model_pb2.MODEL_STATUS_READY and version.runtime == "onnx"
    assert version.original_sha256 == hashlib.sha256(files["model.pkl"]).hexdigest()
