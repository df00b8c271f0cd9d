"""ModelService over gRPC: decode, call the domain, encode."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from flightline.server.api import messages
from flightline.server.errors import InvalidArgument
from flightline.server.services.models import ModelService
from flightline.v1 import model_pb2 as pb
from flightline.v1 import model_pb2_grpc

# How long the end of an upload stream waits for a cancellation notice (see _chunks): long enough for
# a loaded server's gRPC thread to deliver it, short next to any real upload.
CANCEL_NOTICE_S = 0.25


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
            chunks=_chunks(request_iterator, context),
            size_bytes=meta.size_bytes or None,
            sha256=meta.sha256 or None,
        )
        return pb.UploadModelResponse(model_id=version.model_id, version=messages.model_version(version))

    def WatchModelVersion(
        self, request: pb.WatchModelVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelVersion]:
        context.add_callback(self.models.changes.notify)  # a client going away wakes its watch
        wanted = messages.requested_version(request, "version")
        for version in self.models.watch_version(request.model_id, wanted, context.is_active):
            yield messages.model_version(version)

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
            frameworks=[messages.framework(f, self.models.family_built) for f in page.items],
            next_page_token=page.next_page_token,
        )


def _chunks(requests: Iterator[pb.UploadModelRequest], context: grpc.ServicerContext) -> Iterator[bytes]:
    """The file's bytes. When a client dies or its deadline passes, gRPC ends the request iterator
    quietly, as if the client had finished: only a call still active at the end of the stream is the
    client's own end-of-stream. Raising here, before the store moves the bytes to their final name,
    makes the store drop them."""
    ended = threading.Event()  # set when the call terminates: for a cancelled call, soon after the stream
    context.add_callback(ended.set)
    for request in requests:
        if request.HasField("metadata"):
            raise InvalidArgument("only the first UploadModel message may carry `metadata`")
        yield request.chunk
    # A cancellation reaches the call's state a moment after the stream ends, on another thread; a
    # client's own end-of-stream never terminates the call before we answer. Wait that moment.
    if context.time_remaining() <= 0 or ended.wait(CANCEL_NOTICE_S) or not context.is_active():
        raise InvalidArgument("the upload call ended before the client finished its stream")
