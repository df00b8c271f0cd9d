"""Unbounded and hostile input over real gRPC: every oversized or control-character field is
INVALID_ARGUMENT naming the field, nothing is stored, and the server keeps answering."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from support.mlp import build_mlp

from flightline.server.api import limits
from flightline.server.app import App
from flightline.server.client import Client
from flightline.server.errors import InvalidArgument
from flightline.server.services.names import check_dns_name
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

MIB = 1 << 20


@pytest.fixture
def workspace_id(client: Client) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="limits")).id)


def refused(call: Callable[[], Any], field: str) -> str:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    details = failed.value.details() or ""
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert field in details, f"{details!r} does not name {field}"
    assert len(details) < 300, details  # never the value itself echoed back
    return details


def stored_files(app: App) -> list[Path]:
    root = app.settings.data_dir / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload(client: Client, meta: model_pb2.UploadMetadata, *chunks: bytes) -> Any:
    def requests() -> Iterator[model_pb2.UploadModelRequest]:
        yield model_pb2.UploadModelRequest(metadata=meta)
        for chunk in chunks:
            yield model_pb2.UploadModelRequest(chunk=chunk)

    return client.models.UploadModel(requests(), timeout=60)


def nothing_stored(app: App, client: Client, workspace_id: int) -> None:
    assert stored_files(app) == []
    listed = client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id))
    assert list(listed.models) == []


def test_a_63_mb_registry_name_is_refused_and_listing_keeps_working(
    client: Client, workspace_id: int
) -> None:
    good = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace_id, name="ok", url="http://127.0.0.1:1")
    )
    huge = registry_pb2.CreateRegistryRequest(
        workspace_id=workspace_id, name="r" * (63 << 20), url="http://x"
    )
    details = refused(lambda: client.registries.CreateRegistry(huge), "name")
    assert "at most 100 characters" in details
    listed = client.registries.ListRegistries(registry_pb2.ListRegistriesRequest(workspace_id=workspace_id))
    assert [r.id for r in listed.registries] == [good.id]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (dict(name="line\nbreak", url="http://127.0.0.1:1"), "name"),
        (dict(name="nul\x00", url="http://127.0.0.1:1"), "name"),
        (dict(name="ok", url="http://127.0.0.1:1/\r\nX-Injected: 1"), "url"),
        (dict(name="ok", url="http://127.0.0.1:1/" + "p" * 2048), "url"),
        (dict(name="ok", url="http://127.0.0.1:1", token="secret-" + "t" * 4096), "token"),
    ],
)
def test_registry_fields(client: Client, workspace_id: int, request_: dict[str, str], field: str) -> None:
    request = registry_pb2.CreateRegistryRequest(workspace_id=workspace_id, **request_)
    details = refused(lambda: client.registries.CreateRegistry(request), field)
    assert "secret" not in details
    listed = client.registries.ListRegistries(registry_pb2.ListRegistriesRequest(workspace_id=workspace_id))
    assert list(listed.registries) == []


def test_names_with_control_characters(client: Client) -> None:
    for name in ("team\n", "te\x00am", "\x1b[31mred"):
        refused(
            lambda name=name: client.workspaces.CreateWorkspace(
                workspace_pb2.CreateWorkspaceRequest(name=name)
            ),
            "name",
        )
    listed = client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
    assert list(listed.workspaces) == []
    # Not control characters: any other Unicode is a fine display name.
    assert (
        client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="équipe")).name
        == "équipe"
    )


def test_dns_names_with_a_trailing_newline_are_refused() -> None:
    # re.match with "$" accepted "model\n" (the "$" matches before a final newline).
    for name in ("model\n", "model\n\n", "\nmodel"):
        with pytest.raises(InvalidArgument):
            check_dns_name("model", name)
    assert check_dns_name("model", "model-1") == "model-1"


def test_a_file_name_with_nul_stores_nothing(
    app: App, client: Client, workspace_id: int, tmp_path: Path
) -> None:
    data = build_mlp(tmp_path / "mlp.onnx").read_bytes()
    conversion = model_pb2.Conversion(framework="onnx")
    meta = model_pb2.UploadMetadata(
        name="mlp",
        workspace_id=workspace_id,
        conversion=conversion,
        filename="mlp\x00.onnx",
        size_bytes=len(data),
    )
    refused(lambda: upload(client, meta, data), "metadata.filename")
    meta.filename = "f" * 256 + ".onnx"
    refused(lambda: upload(client, meta, data), "metadata.filename")
    meta.filename, meta.name = "mlp.onnx", "mlp\n"
    refused(lambda: upload(client, meta, data), "metadata.name")
    nothing_stored(app, client, workspace_id)


def test_an_oversized_chunk_mid_stream_stores_nothing(
    app: App, client: Client, workspace_id: int, tmp_path: Path
) -> None:
    data = build_mlp(tmp_path / "mlp.onnx").read_bytes()
    meta = model_pb2.UploadMetadata(
        name="mlp",
        workspace_id=workspace_id,
        conversion=model_pb2.Conversion(framework="onnx"),
        size_bytes=len(data) + 4 * MIB + 1,
    )
    refused(lambda: upload(client, meta, data, b"\0" * (4 * MIB + 1)), "chunk")
    nothing_stored(app, client, workspace_id)


@pytest.mark.parametrize(
    ("conversion", "field"),
    [
        (dict(requirements=["numpy"] * 101), "metadata.conversion.requirements"),
        (dict(requirements=["numpy", "x" * 1025]), "metadata.conversion.requirements[1]"),
        (dict(requirements=["numpy\n--index-url http://evil"]), "metadata.conversion.requirements[0]"),
        (dict(options={f"k{i}": "v" for i in range(65)}), "metadata.conversion.options"),
        (dict(options={"k" * 129: "v"}), "metadata.conversion.options key"),
        (dict(options={"target_opset": "1\x007"}), "metadata.conversion.options['target_opset']"),
        (dict(input_schema=b"\0" * (MIB + 1)), "metadata.conversion.input_schema"),
        (dict(framework="x" * 65), "metadata.conversion.framework"),
    ],
)
def test_conversion_fields(
    app: App, client: Client, workspace_id: int, tmp_path: Path, conversion: dict[str, Any], field: str
) -> None:
    data = build_mlp(tmp_path / "mlp.onnx").read_bytes()
    conversion.setdefault("framework", "onnx")
    meta = model_pb2.UploadMetadata(
        name="mlp",
        workspace_id=workspace_id,
        conversion=model_pb2.Conversion(**conversion),
        size_bytes=len(data),
    )
    refused(lambda: upload(client, meta, data), field)
    nothing_stored(app, client, workspace_id)


def test_registry_upload_and_browse_fields(client: Client, workspace_id: int) -> None:
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace_id, name="r", url="http://127.0.0.1:1")
    )
    conversion = model_pb2.Conversion(framework="sklearn")
    request = model_pb2.UploadFromRegistryRequest(
        registry_id=registry.id, name="m", path="p" * 4097, workspace_id=workspace_id, conversion=conversion
    )
    refused(lambda: client.models.UploadFromRegistry(request), "path")
    request.path, request.registry_id = "models:/m/1", registry.id + "\n"
    refused(lambda: client.models.UploadFromRegistry(request), "registry_id")
    versions = registry_pb2.ListRegistryModelVersionsRequest(registry_id=registry.id, name="n" * 1025)
    refused(lambda: client.registries.ListRegistryModelVersions(versions), "name")
    browse = registry_pb2.ListRegistryModelsRequest(registry_id=registry.id, page_token="t" * 4097)
    refused(lambda: client.registries.ListRegistryModels(browse), "page_token")


def test_deployment_fields(client: Client, workspace_id: int) -> None:
    many = deployment_pb2.DeployRequest(
        workspace_id=workspace_id, name="d", steps=[deployment_pb2.StepSpec(model_id=1)] * 33
    )
    refused(lambda: client.deployments.Deploy(many), "steps")
    long_name = deployment_pb2.GetDeploymentRequest(name="d" * 64)
    refused(lambda: client.deployments.GetDeployment(long_name), "name")
    refused(lambda: client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="d\n")), "name")
    assert not client.deployments.ListDeployments(deployment_pb2.ListDeploymentsRequest()).deployments


def test_health_checks_pass_the_walker(client: Client) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(client.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="")).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_every_limit_names_a_field_of_the_api() -> None:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    for key in limits.MAXIMA:
        field = pool.FindFieldByName(key.removesuffix("[]"))
        assert field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) or field.is_repeated, (
            key
        )
        if key.endswith("[]"):
            assert field.is_repeated, key


def test_a_string_that_is_not_utf8_is_invalid_argument(client: Client) -> None:
    raw = client.channel.unary_unary(
        "/flightline.v1.WorkspaceService/CreateWorkspace",
        request_serializer=lambda data: data,
        response_deserializer=workspace_pb2.Workspace.FromString,
    )
    refused(lambda: raw(b"\x0a\x02\xff\xfe", timeout=10), "CreateWorkspace")  # field 1 (name): 2 bad bytes
    assert not client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest()).workspaces
