"""ModelService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from flightline.server.api import messages
from flightline.server.errors import InvalidArgument
from flightline.server.services.models import ModelService
from flightline.v1 import model_pb2 as pb
from flightline.v1 import model_pb2_grpc


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ModelService) -> None:
        self.models = models

    def UploadFromRegistry(
        self, request: pb.UploadFromRegistryRequest, context: grpc.ServicerContext
    ) -> pb.UploadModelResponse:
        version = self.models.upload_from_registry(
            registry_id=request.registry_id,
            path=request.path,
            workspace_id=request.workspace_id,
            name=request.name,
            visibility=messages.VISIBILITY_NAMES[request.visibility],
            conversion=messages.conversion_in(request.conversion),
        )
        return pb.UploadModelResponse(model_id=version.model_id, version=messages.model_version(version))

    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: grpc.ServicerContext
    ) -> pb.UploadModelResponse:
        first = next(request_iterator, None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument("the first UploadModel message must carry `metadata`")
        meta = first.metadata
        version = self.models.upload(
            workspace_id=meta.workspace_id,
            name=meta.name,
            visibility=messages.VISIBILITY_NAMES[meta.visibility],
            conversion=messages.conversion_in(meta.conversion),
            filename=meta.filename or "model",
            chunks=_chunks(request_iterator),
            size_bytes=meta.size_bytes or None,
            sha256=meta.sha256 or None,
        )
        return pb.UploadModelResponse(model_id=version.model_id, version=messages.model_version(version))

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        found = self.models.get_model(request.model_id)
        return messages.model(found, self.models.get_version(found.id))

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.models.list_models(request.workspace_id, limit, after),
            lambda m: m.id,
        )
        latest = self.models.latest_versions([m.id for m in page.items])
        return pb.ListModelsResponse(
            models=[messages.model(m, latest.get(m.id)) for m in page.items],
            next_page_token=page.next_page_token,
        )

    def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> pb.ModelVersion:
        version = messages.requested_version(request, "version")
        return messages.model_version(self.models.get_version(request.model_id, version))

    def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.models.list_versions(request.model_id, limit, after),
            lambda v: v.version,
        )
        return pb.ListModelVersionsResponse(
            versions=[messages.model_version(v) for v in page.items], next_page_token=page.next_page_token
        )

    def ListFrameworks(
        self, request: pb.ListFrameworksRequest, context: grpc.ServicerContext
    ) -> pb.ListFrameworksResponse:
        page = messages.offset_page(request.page_size, request.page_token, self.models.frameworks())
        return pb.ListFrameworksResponse(
            frameworks=[messages.framework(f) for f in page.items], next_page_token=page.next_page_token
        )


def _chunks(requests: Iterator[pb.UploadModelRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.HasField("metadata"):
            raise InvalidArgument("only the first UploadModel message may carry `metadata`")
        yield request.chunk
