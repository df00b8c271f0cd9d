"""Flightline through its public contract only: `flightline serve`, the gRPC control plane stubs
(create a workspace, upload the ONNX file, deploy), then Flight `do_exchange` both through the
front door and directly to the deployment's runtime server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from bench.context import RunContext
from bench.measure import Cell
from bench.models import BenchModel
from bench.paths.exchange import measure_exchange
from bench.procs import ServerProcess, free_port
from flightline.v1 import (
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

FRONT_DOOR = "flightline-front-door"
FRONT_DOOR_ENVELOPE = "flightline-front-envelope"
DIRECT = "flightline-direct"
CHUNK_BYTES = 1 << 20
READY_LINE = "FLIGHTLINE_SERVING "
# Results with the out. columns only (no echo of the inputs), like the bare reference's answers; the
# envelope path shows what echoing the inputs (the default) costs.
OUTPUTS_MODE = "outputs"


def start_flightline(ctx: RunContext) -> tuple[ServerProcess, str]:
    """Starts `flightline serve` on loopback ports; returns it and its control plane address."""
    grpc_port, flight_port = free_port(), free_port()
    cli = str(Path(sys.executable).with_name("flightline"))
    server = ctx.processes.start(
        "flightline",
        [
            cli,
            "serve",
            "--data-dir",
            str(ctx.work_dir / "flightline"),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--flight-port",
            str(flight_port),
        ],
    )
    line = server.wait_for_line(READY_LINE, timeout=120)
    fields = dict(part.split("=", 1) for part in line.removeprefix(READY_LINE).split())
    return server, fields["grpc"]


def upload_requests(model: BenchModel, workspace_id: int) -> Iterator[model_pb2.UploadModelRequest]:
    name = f"bench-{model.key.lower()}"
    size = model.onnx_path.stat().st_size
    conversion = model_pb2.Conversion(framework="onnx")
    yield model_pb2.UploadModelRequest(
        metadata=model_pb2.UploadMetadata(
            name=name,
            workspace_id=workspace_id,
            conversion=conversion,
            filename=model.onnx_path.name,
            size_bytes=size,
        )
    )
    with model.onnx_path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield model_pb2.UploadModelRequest(chunk=chunk)


class Deployer:
    """The control plane calls the bench needs, through the generated stubs."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self._channel).result(timeout=30)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)
        self._deployments = deployment_pb2_grpc.DeploymentServiceStub(self._channel)
        workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self._channel)
        workspace = workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(name=f"bench-{os.getpid()}")
        )
        self.workspace_id: int = workspace.id

    def deploy(self, model: BenchModel) -> deployment_pb2.Deployment:
        uploaded = self._models.UploadModel(upload_requests(model, self.workspace_id), timeout=300)
        # Uploads and deploys return at once (PENDING_CONVERSION / DEPLOYING): follow their Watch streams
        # to the last state.
        watch = model_pb2.WatchModelVersionRequest(
            model_id=uploaded.model_id, version=uploaded.version.version
        )
        *_, version = [uploaded.version, *self._models.WatchModelVersion(watch, timeout=300)]
        if version.status != model_pb2.MODEL_STATUS_READY:
            raise RuntimeError(f"model {model.key} upload not ready: {version.status_reason}")
        request = deployment_pb2.DeployRequest(
            workspace_id=self.workspace_id,
            name=f"bench-{model.key.lower()}",
            steps=[deployment_pb2.StepSpec(model_id=uploaded.model_id)],
        )
        deployment = self._deployments.Deploy(request, timeout=300)
        following = deployment_pb2.WatchDeploymentRequest(name=request.name)
        *_, deployment = [deployment, *self._deployments.WatchDeployment(following, timeout=300)]
        if deployment.status != deployment_pb2.DEPLOYMENT_STATUS_RUNNING:
            raise RuntimeError(f"deployment of model {model.key} failed: {deployment.status_reason}")
        return deployment

    def close(self) -> None:
        self._channel.close()


def run_models(models: list[BenchModel], ctx: RunContext, paths: set[str]) -> list[Cell]:
    """Deploys every model on one Flightline server, then measures the selected Flightline paths."""
    server, address = start_flightline(ctx)
    deployer: Deployer | None = None
    try:
        deployer = Deployer(address)
        cells: list[Cell] = []
        for model in models:
            deployment = deployer.deploy(model)
            schema = pa.ipc.read_schema(pa.py_buffer(deployment.input_schema))
            targets = {
                FRONT_DOOR: (
                    deployment.flight_location,
                    flight.FlightDescriptor.for_path(deployment.name, OUTPUTS_MODE),
                ),
                FRONT_DOOR_ENVELOPE: (
                    deployment.flight_location,
                    flight.FlightDescriptor.for_path(deployment.name),
                ),
                DIRECT: (deployment.steps[0].location, flight.FlightDescriptor.for_path(OUTPUTS_MODE)),
            }
            for path, (location, descriptor) in targets.items():
                # ONNX runs in the front door only: there is no runtime server to call directly.
                if path in paths and location:
                    print(f"== model {model.key}, {path}", flush=True)
                    cells += measure_exchange(model, path, ctx, location, descriptor, schema)
        return cells
    finally:
        if deployer is not None:
            deployer.close()
        ctx.processes.stop(server)
