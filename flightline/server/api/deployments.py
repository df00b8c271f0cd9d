"""DeploymentService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

import grpc

from flightline.server.api import messages
from flightline.server.services.deployments import DeploymentService, batching_of
from flightline.server.store.records import Deployment, DeploymentStep
from flightline.v1 import deployment_pb2 as pb
from flightline.v1 import deployment_pb2_grpc


class DeploymentServicer(deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, deployments: DeploymentService, flight_location: str) -> None:
        self.deployments = deployments
        self.flight_location = flight_location

    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> pb.Deployment:
        steps = [DeploymentStep(s.model_id, s.version) for s in request.steps]
        batching = None
        if request.HasField("batching"):
            batching = batching_of(request.batching.max_batch_rows, request.batching.max_delay_ms)
        return self._message(
            self.deployments.deploy(request.workspace_id, request.name, steps, batching=batching)
        )

    def Undeploy(self, request: pb.UndeployRequest, context: grpc.ServicerContext) -> pb.Deployment:
        return self._message(self.deployments.undeploy(request.name))

    def GetDeployment(self, request: pb.GetDeploymentRequest, context: grpc.ServicerContext) -> pb.Deployment:
        return self._message(self.deployments.get(request.name))

    def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        return pb.ListDeploymentsResponse(
            deployments=[self._message(d) for d in self.deployments.in_workspace(request.workspace_id)]
        )

    def _message(self, deployment: Deployment) -> pb.Deployment:
        live = self.deployments.live(deployment.name)
        return messages.deployment(deployment, live, self.flight_location)
