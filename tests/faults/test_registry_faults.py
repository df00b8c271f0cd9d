"""Registries that answer with errors, and registries used where they are not attached (issue 6, items 6
and 8). Against real servers: the gRPC app and the Databricks REST stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.dbfs_server import DbfsRegistry, DbfsServer, dbfs_server
from support.health import responsive

from flightline.server.app import App
from flightline.server.client import Client
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

SECRET = "s3cr3t-internal-db-password-7f2a"
TOKEN = "dapi-token"


def workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def registry(client: Client, workspace_id: int, url: str) -> str:
    request = registry_pb2.CreateRegistryRequest(workspace_id=workspace_id, name="dbx", url=url, token=TOKEN)
    return str(client.registries.CreateRegistry(request).id)


def upload_request(registry_id: str, workspace_id: int) -> model_pb2.UploadFromRegistryRequest:
    return model_pb2.UploadFromRegistryRequest(
        registry_id=registry_id,
        path="models:/wine/1",
        workspace_id=workspace_id,
        name="wine",
        conversion=model_pb2.Conversion(framework="sklearn"),
    )


def stored_files(app: App) -> list[Path]:
    root = app.settings.data_dir / "artifacts" / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def models_in(client: Client, workspace_id: int) -> list[model_pb2.Model]:
    return list(client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models)


@pytest.fixture
def stand_in() -> Iterator[DbfsServer]:
    with dbfs_server(DbfsRegistry(token=TOKEN, model="wine", files={"model.pkl": b"not used"})) as server:
        yield server


def _calls(client: Client, registry_id: str, workspace_id: int) -> dict[str, Callable[[], object]]:
    return {
        "ListRegistryModels": lambda: client.registries.ListRegistryModels(
            registry_pb2.ListRegistryModelsRequest(registry_id=registry_id)
        ),
        "ListRegistryModelVersions": lambda: client.registries.ListRegistryModelVersions(
            registry_pb2.ListRegistryModelVersionsRequest(registry_id=registry_id, name="wine")
        ),
        "ListModelVersionArtifacts": lambda: client.registries.ListModelVersionArtifacts(
            registry_pb2.ListModelVersionArtifactsRequest(registry_id=registry_id, name="wine", version="1")
        ),
        "UploadFromRegistry": lambda: client.models.UploadFromRegistry(
            upload_request(registry_id, workspace_id)
        ),
    }


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, f'{{"error_code": "INVALID_PARAMETER_VALUE", "message": "{SECRET}"}}', "INVALID_ARGUMENT"),
        (401, f'{{"error_code": "UNAUTHENTICATED", "message": "{SECRET}"}}', "UNAUTHENTICATED"),
        (403, f"<html>Forbidden by proxy: {SECRET}</html>", "UNAUTHENTICATED"),
        (404, f'{{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "{SECRET}"}}', "NOT_FOUND"),
        (418, f"plain text from an internal service: {SECRET}", "INVALID_ARGUMENT"),
        (500, f'{{"error_code": "INTERNAL_ERROR", "detail": "{SECRET}"}}', "UNAVAILABLE"),
        (502, f"Bad gateway: upstream said {SECRET}", "UNAVAILABLE"),
    ],
)
def test_registry_error_bodies_never_reach_the_client(
    app: App,
    client: Client,
    stand_in: DbfsServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: str,
    code: str,
) -> None:
    workspace_id = workspace(client, "errors")
    registry_id = registry(client, workspace_id, stand_in.url)
    stand_in.registry.error_status, stand_in.registry.error_body = status, body
    with responsive(app.grpc_address, workspace_id) as watch:
        for method, call in _calls(client, registry_id, workspace_id).items():
            if status >= 500 and method != "UploadFromRegistry" and method != "ListRegistryModels":
                continue  # each 5xx call is retried with backoff; two methods show it
            with pytest.raises(grpc.RpcError) as failed:
                call()
            assert failed.value.code() == getattr(grpc.StatusCode, code), (method, failed.value.details())
            details = str(failed.value.details())
            assert SECRET not in details, (method, details)
            assert f"HTTP {status}" in details, (method, details)  # the status is all that is told
    watch.assert_responsive()
    assert SECRET in caplog.text  # the operator still learns what the registry said
    assert models_in(client, workspace_id) == [] and stored_files(app) == []


def test_upload_needs_the_registry_attached_to_the_workspace(
    app: App, client: Client, stand_in: DbfsServer
) -> None:
    home = workspace(client, "home")
    other = workspace(client, "other")
    registry_id = registry(client, home, stand_in.url)
    with responsive(app.grpc_address, home) as watch:
        # Never attached to `other`.
        with pytest.raises(grpc.RpcError) as never:
            client.models.UploadFromRegistry(upload_request(registry_id, other))
        assert never.value.code() == grpc.StatusCode.NOT_FOUND
        assert registry_id in str(never.value.details()) and "not attached" in str(never.value.details())
        # Detached from `home` (through the store, whatever the RPC is called).
        app.store.detach_registry(registry_id, home)
        with pytest.raises(grpc.RpcError) as detached:
            client.models.UploadFromRegistry(upload_request(registry_id, home))
        assert detached.value.code() == grpc.StatusCode.NOT_FOUND
        assert registry_id in str(detached.value.details())
    watch.assert_responsive()
    assert stand_in.registry.requests == 0  # refused before the registry was asked anything
    assert models_in(client, home) == [] and models_in(client, other) == [] and stored_files(app) == []
