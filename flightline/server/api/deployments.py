"""DeploymentService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from flightline.server.access.authn import current
from flightline.server.api import messages
from flightline.server.errors import FailedPrecondition
from flightline.server.services.deployments import DeploymentService, batching_of
from flightline.server.services.follow import AliasFollower
from flightline.server.store.records import Deployment, DeploymentStep, Follow
from flightline.v1 import deployment_pb2 as pb
from flightline.v1 import deployment_pb2_grpc


class DeploymentServicer(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(
        self, deployments: DeploymentService, flight_location: str, follower: AliasFollower | None = None
    ) -> None:
        self.deployments = deployments
        self.flight_location = flight_location
        self.follower = follower

    def FollowAlias(self, request: pb.FollowAliasRequest, context: grpc.ServicerContext) -> pb.AliasFollow:
        if self.follower is None:
            raise FailedPrecondition("this server does not follow registry aliases")
        follow = self.follower.follow(request.workspace_id, request.name, request.registry_id, request.uri)
        return messages.alias_follow(follow)

    def StopFollowingAlias(
        self, request: pb.StopFollowingAliasRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        if self.follower is None:
            raise FailedPrecondition("this server does not follow registry aliases")
        return self._message(self.follower.stop(request.workspace_id, request.name))

    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> pb.Deployment:
        steps = _steps(request.steps, "steps")
        batching = None
        if request.HasField("batching"):
            batching = batching_of(request.batching.max_batch_rows, request.batching.max_delay_ms)
        return self._message(
            self.deployments.deploy(
                request.workspace_id, request.name, steps, batching=batching, actor=_actor(context)
            )
        )

    def WatchDeployment(
        self, request: pb.WatchDeploymentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Deployment]:
        context.add_callback(self.deployments.changes.notify)  # a client going away wakes its watch
        for deployment in self.deployments.watch(request.workspace_id, request.name, context.is_active):
            yield self._message(deployment)

    def Undeploy(self, request: pb.UndeployRequest, context: grpc.ServicerContext) -> pb.Deployment:
        return self._message(self.deployments.undeploy(request.workspace_id, request.name))

    def GetDeployment(self, request: pb.GetDeploymentRequest, context: grpc.ServicerContext) -> pb.Deployment:
        return self._message(self.deployments.get(request.workspace_id, request.name))

    def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        workspace_id = request.workspace_id if request.HasField("workspace_id") else None
        caller = current()
        only = None if caller is None or workspace_id is not None else caller.workspaces()
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.deployments.in_workspace(workspace_id, limit, after, only),
            lambda d: d.id,
        )
        follows = self.follower.by_deployment() if self.follower is not None else {}  # one query a page
        return pb.ListDeploymentsResponse(
            deployments=[self._message(d, follows) for d in page.items], next_page_token=page.next_page_token
        )

    def UpdateDeployment(
        self, request: pb.UpdateDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        batching = None
        if request.HasField("batching"):
            batching = batching_of(request.batching.max_batch_rows, request.batching.max_delay_ms)
        updated = self.deployments.update(
            request.workspace_id,
            request.name,
            _steps(request.steps, "steps"),
            reason=request.reason or "update",
            actor=_actor(context),
            batching=batching,
            wait=False,
        )
        return self._message(updated)

    def SetTrafficSplit(
        self, request: pb.SetTrafficSplitRequest, context: grpc.ServicerContext
    ) -> pb.Deployment:
        changed = self.deployments.set_split(
            request.workspace_id,
            request.name,
            _steps(request.canary_steps, "canary_steps"),
            request.canary_percent,
            reason=request.reason or f"canary at {request.canary_percent}%",
            actor=_actor(context),
            wait=False,
        )
        return self._message(changed)

    def SetShadow(self, request: pb.SetShadowRequest, context: grpc.ServicerContext) -> pb.Deployment:
        changed = self.deployments.set_shadow(
            request.workspace_id,
            request.name,
            _steps(request.shadow_steps, "shadow_steps"),
            reason=request.reason or ("shadow set" if request.shadow_steps else "shadow removed"),
            actor=_actor(context),
            wait=False,
        )
        return self._message(changed)

    def ListDeploymentRevisions(
        self, request: pb.ListDeploymentRevisionsRequest, context: grpc.ServicerContext
    ) -> pb.ListDeploymentRevisionsResponse:
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.deployments.revisions(request.workspace_id, request.name, limit, after),
            lambda r: r.revision,
        )
        return pb.ListDeploymentRevisionsResponse(
            revisions=[messages.revision(r) for r in page.items], next_page_token=page.next_page_token
        )

    def _message(self, deployment: Deployment, follows: dict[int, Follow] | None = None) -> pb.Deployment:
        live = self.deployments.live(deployment.workspace_id, deployment.name)
        if follows is not None:
            follow = follows.get(deployment.id)
        else:
            follow = self.follower.get(deployment.id) if self.follower is not None else None
        return messages.deployment(deployment, live, self.flight_location, follow)


def _steps(specs: Iterable[pb.StepSpec], field: str) -> list[DeploymentStep]:
    return [
        DeploymentStep(s.model_id, messages.requested_version(s, f"{field}[{i}].version"))
        for i, s in enumerate(specs)
    ]


def _actor(context: grpc.ServicerContext) -> str:
    """Who asked, for the revision history: the authenticated caller's user name (access control's
    identity of the caller); empty when the server runs without authentication."""
    caller = current()
    return "" if caller is None else caller.name[:255]
