"""RegistryService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

import grpc

from flightline.server.api import messages
from flightline.server.services.registries import RegistryService
from flightline.v1 import registry_pb2 as pb
from flightline.v1 import registry_pb2_grpc


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registries: RegistryService) -> None:
        self.registries = registries

    def CreateRegistry(self, request: pb.CreateRegistryRequest, context: grpc.ServicerContext) -> pb.Registry:
        created = self.registries.create(request.workspace_id, request.name, request.url, request.token)
        return messages.registry(created)

    def AttachRegistry(
        self, request: pb.AttachRegistryRequest, context: grpc.ServicerContext
    ) -> pb.RegistryWorkspace:
        self.registries.attach(request.registry_id, request.workspace_id)
        return pb.RegistryWorkspace(registry_id=request.registry_id, workspace_id=request.workspace_id)

    def DetachRegistry(
        self, request: pb.DetachRegistryRequest, context: grpc.ServicerContext
    ) -> pb.RegistryWorkspace:
        self.registries.detach(request.registry_id, request.workspace_id)
        return pb.RegistryWorkspace(registry_id=request.registry_id, workspace_id=request.workspace_id)

    def GetRegistry(self, request: pb.GetRegistryRequest, context: grpc.ServicerContext) -> pb.Registry:
        return messages.registry(self.registries.get(request.registry_id))

    def ListRegistries(
        self, request: pb.ListRegistriesRequest, context: grpc.ServicerContext
    ) -> pb.ListRegistriesResponse:
        page = messages.keyset_page(
            request.page_size,
            messages.page_after_uuid(request.page_token),
            lambda limit, after: self.registries.in_workspace(request.workspace_id, limit, after),
            lambda r: r.id,
        )
        return pb.ListRegistriesResponse(
            registries=[messages.registry(r) for r in page.items], next_page_token=page.next_page_token
        )

    def ListRegistryModels(
        self, request: pb.ListRegistryModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListRegistryModelsResponse:
        items, token = self.registries.list_models(
            request.registry_id, messages.page_size(request.page_size), request.page_token
        )
        return pb.ListRegistryModelsResponse(
            registered_models=[messages.registered_model(m) for m in items], next_page_token=token
        )

    def ListRegistryModelVersions(
        self, request: pb.ListRegistryModelVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListRegistryModelVersionsResponse:
        items, token = self.registries.list_versions(
            request.registry_id, request.name, messages.page_size(request.page_size), request.page_token
        )
        return pb.ListRegistryModelVersionsResponse(
            versions=[messages.registered_version(v) for v in items], next_page_token=token
        )

    def ListModelVersionArtifacts(
        self, request: pb.ListModelVersionArtifactsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelVersionArtifactsResponse:
        # The registry lists a version's files all at once (and they never change): page by position.
        # Size and token are checked before the registry is asked.
        messages.page_size(request.page_size)
        messages.page_after(request.page_token)
        items = self.registries.list_artifacts(request.registry_id, request.name, request.version)
        page = messages.offset_page(request.page_size, request.page_token, items)
        return pb.ListModelVersionArtifactsResponse(
            artifacts=[messages.registry_artifact(a) for a in page.items],
            next_page_token=page.next_page_token,
        )
