"""WorkspaceService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from flightline.server.access.authn import current
from flightline.server.api import messages
from flightline.server.services.workspaces import WorkspaceService
from flightline.v1 import workspace_pb2 as pb
from flightline.v1 import workspace_pb2_grpc


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(
        self, workspaces: WorkspaceService, on_member_change: Callable[[], None] | None = None
    ) -> None:
        self.workspaces = workspaces
        self.on_member_change = on_member_change

    def CreateWorkspace(
        self, request: pb.CreateWorkspaceRequest, context: grpc.ServicerContext
    ) -> pb.Workspace:
        caller = current()
        created = self.workspaces.create(request.name, None if caller is None else caller.user_id)
        if self.on_member_change is not None:
            self.on_member_change()  # the creator's new role applies to its next call
        return messages.workspace(created)

    def GetWorkspace(self, request: pb.GetWorkspaceRequest, context: grpc.ServicerContext) -> pb.Workspace:
        return messages.workspace(self.workspaces.get(request.workspace_id))

    def ListWorkspaces(
        self, request: pb.ListWorkspacesRequest, context: grpc.ServicerContext
    ) -> pb.ListWorkspacesResponse:
        caller = current()
        only = None if caller is None else caller.workspaces()  # the caller's own (all: platform admin)
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.workspaces.page(limit, after, only),
            lambda w: w.id,
        )
        return pb.ListWorkspacesResponse(
            workspaces=[messages.workspace(w) for w in page.items], next_page_token=page.next_page_token
        )
