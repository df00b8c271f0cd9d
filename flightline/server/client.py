"""A thin Python client over the generated stubs: what the CLI, the sample and the tests use.
Other languages use the .proto files directly; nothing here is needed to talk to the server."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

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


class _Stateful(Protocol):  # a ModelVersion or a Deployment message
    @property
    def status(self) -> int: ...


_T = TypeVar("_T", bound=_Stateful)

CHUNK = 1 << 20
MAX_MESSAGE = 64 * 1024 * 1024
MODEL_DONE = frozenset({model_pb2.MODEL_STATUS_READY, model_pb2.MODEL_STATUS_ERROR})
DEPLOYMENT_DONE = frozenset(
    {
        deployment_pb2.DEPLOYMENT_STATUS_RUNNING,
        deployment_pb2.DEPLOYMENT_STATUS_FAILED,
        deployment_pb2.DEPLOYMENT_STATUS_STOPPED,
    }
)


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
        *,
        wait: bool = True,
        on_status: Callable[[model_pb2.ModelVersion], None] | None = None,
    ) -> model_pb2.UploadModelResponse:
        """Streams a file in 1 MiB chunks, with size and sha256 so the server can refuse a truncated copy.
        With `wait` (the default), then follows the new version until READY or ERROR (see
        wait_version) and returns the response with that final version."""
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
        if wait:
            response.version.CopyFrom(
                self.wait_version(response.model_id, response.version.version, on_status=on_status)
            )
        return response

    def wait_version(
        self,
        model_id: int,
        version: int | None = None,
        *,
        on_status: Callable[[model_pb2.ModelVersion], None] | None = None,
        timeout: float | None = None,
    ) -> model_pb2.ModelVersion:
        """Follows WatchModelVersion until the version (None: the latest) is READY or ERROR and returns
        it; `on_status` sees every state on the way. Watches again when a stream ends early (its lifetime
        is bounded)."""
        request = model_pb2.WatchModelVersionRequest(model_id=model_id, version=version)
        found: model_pb2.ModelVersion = _follow(
            lambda left: self.models.WatchModelVersion(request, timeout=left), MODEL_DONE, on_status, timeout
        )
        return found

    def deploy(
        self,
        workspace_id: int,
        name: str,
        *model_ids: int,
        wait: bool = True,
        on_status: Callable[[deployment_pb2.Deployment], None] | None = None,
        timeout: float | None = None,
    ) -> deployment_pb2.Deployment:
        """Deploys the latest versions of `model_ids` as a pipeline. With `wait` (the default), follows
        WatchDeployment until it is RUNNING or FAILED and returns that state; else returns DEPLOYING."""
        steps = [deployment_pb2.StepSpec(model_id=m) for m in model_ids]
        request = deployment_pb2.DeployRequest(workspace_id=workspace_id, name=name, steps=steps)
        deployment: deployment_pb2.Deployment = self.deployments.Deploy(request)
        if not wait:
            return deployment
        return self.wait_deployment(name, on_status=on_status, timeout=timeout)

    def wait_deployment(
        self,
        name: str,
        *,
        on_status: Callable[[deployment_pb2.Deployment], None] | None = None,
        timeout: float | None = None,
    ) -> deployment_pb2.Deployment:
        """Follows WatchDeployment until the deployment is RUNNING, FAILED or STOPPED."""
        request = deployment_pb2.WatchDeploymentRequest(name=name)
        found: deployment_pb2.Deployment = _follow(
            lambda left: self.deployments.WatchDeployment(request, timeout=left),
            DEPLOYMENT_DONE,
            on_status,
            timeout,
        )
        return found


def _follow(
    watch: Callable[[float | None], Iterator[_T]],
    done: frozenset[int],
    on_status: Callable[[_T], None] | None,
    timeout: float | None,
) -> _T:
    """The last state of a Watch stream once it is in `done`, re-watching streams that end before."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        last = None
        for last in watch(left):
            if on_status is not None:
                on_status(last)
            if last.status in done:
                return last
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"still {last.status if last is not None else 'unknown'} after {timeout} s")


def every_page(rpc: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
    """The items of every page of a List RPC (AIP-158), e.g.
    every_page(client.workspaces.ListWorkspaces, ListWorkspacesRequest(), "workspaces")."""
    page = type(request)()
    page.CopyFrom(request)
    while True:
        response = rpc(page)
        yield from getattr(response, field)
        if not response.next_page_token:
            return
        page.page_token = response.next_page_token


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
