"""WorkspaceService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

import grpc

from flightline.server.api import messages
from flightline.server.services.workspaces import WorkspaceService
from flightline.v1 import workspace_pb2 as pb
from flightline.v1 import workspace_pb2_grpc


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, workspaces: WorkspaceService) -> None:
        self.workspaces = workspaces

    def CreateWorkspace(
        self, request: pb.CreateWorkspaceRequest, context: grpc.ServicerContext
    ) -> pb.Workspace:
        return messages.workspace(self.workspaces.create(request.name))

    def GetWorkspace(self, request: pb.GetWorkspaceRequest, context: grpc.ServicerContext) -> pb.Workspace:
        return messages.workspace(self.workspaces.get(request.workspace_id))

    def ListWorkspaces(
        self, request: pb.ListWorkspacesRequest, context: grpc.ServicerContext
    ) -> pb.ListWorkspacesResponse:
        page = messages.keyset_page(
            request.page_size, messages.page_after(request.page_token), self.workspaces.page, lambda w: w.id
        )
        return pb.ListWorkspacesResponse(
            workspaces=[messages.workspace(w) for w in page.items], next_page_token=page.next_page_token
        )
