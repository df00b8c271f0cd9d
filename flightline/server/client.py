"""A thin stub-level client over the generated bindings: what the server's sample, the bench and the tests
use. The public Python client is `flightline.connect` (flightline/client.py); paging, waiting, chunked
uploads and Flight exchanges are implemented there once and used here."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.flight as flight

from flightline.transport import (
    MODEL_DONE,
    deployment_settled,
    every_page,
    exchange_table,
    follow,
    open_channel,
    upload_requests,
)
from flightline.v1 import (
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    registry_pb2_grpc,
    workspace_pb2_grpc,
)

__all__ = ["Client", "every_page", "infer"]


def _token(token: str | None) -> str | None:
    return token if token is not None else os.environ.get("FLIGHTLINE_TOKEN") or None


class Client:
    """`token` defaults to FLIGHTLINE_TOKEN, sent as `authorization: Bearer <token>` on every call."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.channel = open_channel(address, _token(token))
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
        response: model_pb2.UploadModelResponse = self.models.UploadModel(
            upload_requests(path, metadata, progress), timeout=timeout
        )
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
        found: model_pb2.ModelVersion = follow(
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
        return self.wait_deployment(name, workspace_id, on_status=on_status, timeout=timeout)

    def wait_deployment(
        self,
        name: str,
        workspace_id: int = 0,
        *,
        on_status: Callable[[deployment_pb2.Deployment], None] | None = None,
        timeout: float | None = None,
    ) -> deployment_pb2.Deployment:
        """Follows WatchDeployment until the deployment is RUNNING, FAILED or STOPPED."""
        request = deployment_pb2.WatchDeploymentRequest(name=name, workspace_id=workspace_id)
        found: deployment_pb2.Deployment = follow(
            lambda left: self.deployments.WatchDeployment(request, timeout=left),
            deployment_settled,
            on_status,
            timeout,
        )
        return found


def infer(location: str, name: str, table: pa.Table, *, mode: str = "", token: str | None = None) -> pa.Table:
    """Streams a table through a deployment with do_exchange and returns the results; `name` is the
    deployment's flight_path or its bare name. `token` defaults to FLIGHTLINE_TOKEN."""
    path = [segment for segment in (name, mode) if segment]
    given = _token(token)
    options = flight.FlightCallOptions(
        headers=[(b"authorization", f"Bearer {given}".encode())] if given else []
    )
    with flight.connect(location) as conn:
        return exchange_table(conn, path, table, options)
