"""Flightline through its public contract only: `flightline serve`, the control plane through the
public client (create a workspace, upload the ONNX file, deploy), then Flight `do_exchange` both
through the front door and directly to the deployment's runtime server."""

from __future__ import annotations

import pyarrow.flight as flight

from bench.context import RunContext
from bench.flightline_server import OUTPUTS_MODE, Deployer, input_schema_of, start_server
from bench.measure import Cell
from bench.models import BenchModel
from bench.paths.exchange import measure_exchange

FRONT_DOOR = "flightline-front-door"
FRONT_DOOR_ENVELOPE = "flightline-front-envelope"
DIRECT = "flightline-direct"


def run_models(models: list[BenchModel], ctx: RunContext, paths: set[str]) -> list[Cell]:
    """Deploys every model on one Flightline server, then measures the selected Flightline paths."""
    server = start_server(ctx.processes, ctx.work_dir / "flightline")
    deployer: Deployer | None = None
    try:
        deployer = Deployer(server.grpc_address)
        cells: list[Cell] = []
        for model in models:
            name = f"bench-{model.key.lower()}"
            version = deployer.upload(model.onnx_path, name, "onnx")
            deployment = deployer.deploy(name, version.model_id)
            schema = input_schema_of(deployment)
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
                if path not in paths:
                    continue
                print(f"== model {model.key}, {path}", flush=True)
                if not location:  # a build that serves native ONNX in the front door only
                    note = "no runtime server location"
                    cells += [Cell.skipped(model.key, path, rows, note) for rows in ctx.sizes]
                    continue
                cells += measure_exchange(model, path, ctx, location, descriptor, schema)
        return cells
    finally:
        if deployer is not None:
            deployer.close()
        ctx.processes.stop(server.process)
