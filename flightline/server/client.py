"""A thin Python client over the generated stubs: what the CLI, the sample and the tests use.
Other languages use the .proto files directly; nothing here is needed to talk to the server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from flightline.v1 import (
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    registry_pb2_grpc,
    workspace_pb2_grpc,
)

CHUNK = 1 << 20
MAX_MESSAGE = 64 * 1024 * 1024


class Client:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self.channel)
        self.registries = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.models = model_pb2_grpc.ModelServiceStub(self.channel)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def upload_file(
        self,
        path: Path,
        metadata: model_pb2.UploadMetadata,
        progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> model_pb2.UploadModelResponse:
        """Streams a file in 1 MiB chunks, with size and sha256 so the server can refuse a truncated copy."""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        meta = model_pb2.UploadMetadata()
        meta.CopyFrom(metadata)
        meta.filename = meta.filename or path.name
        meta.size_bytes = path.stat().st_size
        meta.sha256 = digest.hexdigest()

        def requests() -> Iterator[model_pb2.UploadModelRequest]:
            yield model_pb2.UploadModelRequest(metadata=meta)
            sent = 0
            with path.open("rb") as f:
                while block := f.read(CHUNK):
                    yield model_pb2.UploadModelRequest(chunk=block)
                    sent += len(block)
                    if progress is not None:
                        progress(sent)

        response: model_pb2.UploadModelResponse = self.models.UploadModel(requests(), timeout=timeout)
        return response

    def deploy(self, workspace_id: int, name: str, *model_ids: int) -> deployment_pb2.Deployment:
        steps = [deployment_pb2.StepSpec(model_id=m) for m in model_ids]
        request = deployment_pb2.DeployRequest(workspace_id=workspace_id, name=name, steps=steps)
        deployment: deployment_pb2.Deployment = self.deployments.Deploy(request)
        return deployment


def infer(location: str, name: str, table: pa.Table, *, mode: str = "") -> pa.Table:
    """Streams a table through a deployment with do_exchange and returns the results. At a runtime
    server's own location, pass the model's key as `name`."""
    path = [segment for segment in (name, mode) if segment]
    with flight.connect(location) as conn:
        writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path(*path))
        with writer:
            writer.begin(table.schema)
            results = []
            for batch in table.to_batches():
                writer.write_batch(batch)
                results.append(reader.read_chunk().data)
            writer.done_writing()
        return pa.Table.from_batches(results, schema=reader.schema if not results else None)
