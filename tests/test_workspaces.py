"""WorkspaceService over the real gRPC server, plus health checking and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flightline.server.client import Client
from flightline.v1 import workspace_pb2


def test_create_get_list_with_paging(client: Client) -> None:
    created = [
        client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=f"ws-{i}"))
        for i in range(5)
    ]
    assert (
        client.workspaces.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=created[2].id)).name
        == "ws-2"
    )
    seen, token = [], ""
    while True:
        page = client.workspaces.ListWorkspaces(
            workspace_pb2.ListWorkspacesRequest(page_size=2, page_token=token)
        )
        assert len(page.workspaces) <= 2
        seen += [w.name for w in page.workspaces]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"ws-{i}" for i in range(5)]
    assert created[0].create_time.seconds > 0


def test_errors_have_status_codes(client: Client) -> None:
    client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="team"))
    with pytest.raises(grpc.RpcError) as taken:
        client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="team"))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as empty:
        client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=""))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        client.workspaces.GetWorkspace(workspace_pb2.GetWorkspaceRequest(workspace_id=999))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "999" in (missing.value.details() or "")
    with pytest.raises(grpc.RpcError) as token:
        client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest(page_token="garbage"))
    assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "flightline.v1.ModelService", "flightline.v1.DeploymentService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "flightline.v1.WorkspaceService",
        "flightline.v1.RegistryService",
        "flightline.v1.ModelService",
        "flightline.v1.DeploymentService",
    } <= names
