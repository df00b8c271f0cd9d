"""Issue 13's cell: the p99 of a client streaming through updates, against the same client at steady state.

One `flightline serve` per variant (model A's ONNX in the front door, and in a runtime server, where an
update loads and unloads a model in another process). Two versions of model A are uploaded; one client
sends 1-row requests without pause, opening a new stream every `STREAM_REQUESTS` requests (a stream stays
on the version it started on, so a client that never reopens would never see an update). First for
`timed` seconds at steady state, then as long again while the deployment is updated back and forth
between the versions every `UPDATE_EVERY` seconds. Every answer is checked; a failed request fails the
cell."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from bench.context import RunContext
from bench.flightline_server import IN_PROCESS_SETTING, Deployer, flight_middleware, start_server
from bench.measure import Cell
from bench.models import BenchModel
from bench.paths.serving import Session, seconds
from bench.tensors import from_matrix, output_matrix
from flightline.v1 import deployment_pb2

STEADY = "stream-steady"
THROUGH_UPDATES = "stream-through-updates"
STREAM_REQUESTS = 50
UPDATE_EVERY = 0.5  # seconds between updates
WAIT_SECONDS = 120.0


def run_rollout(models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    model = next((m for m in models if m.key == "A"), None)
    if model is None:
        return [Cell.skipped("A", THROUGH_UPDATES, 1, "skipped: needs model A (--models A)")]
    cells: list[Cell] = []
    for where, settings in (("front door", {}), ("runtime server", {IN_PROCESS_SETTING: False})):
        print(f"== model A, a client streaming through updates (ONNX in the {where})", flush=True)
        server = start_server(
            ctx.processes, ctx.work_dir / f"rollout-{where.replace(' ', '-')}", "rollout", **settings
        )
        try:
            with Session(server) as deployer:
                name = "bench-rollout"
                first = deployer.upload(model.onnx_path, name, "onnx")
                second = deployer.upload(model.onnx_path, name, "onnx")
                deployment = deployer.deploy(name, first.model_id)  # the latest: `second`
                versions = [second.version, first.version]
                schema = pa.ipc.read_schema(pa.py_buffer(deployment.input_schema))
                matrix = model.inputs(1)
                batch = pa.RecordBatch.from_arrays([from_matrix(matrix, schema.field(0).type)], schema=schema)
                expected = ctx.expected(model, 1)[model.primary_output]
                timed, warmup = seconds(ctx)
                client = Streamer(deployment.flight_location, name, batch, model.primary_output, expected)
                client.run(warmup)
                steady = client.run(timed)
                changes = Updates(deployer, name, first.model_id, versions)
                changes.start()
                try:
                    during = client.run(timed)
                finally:
                    changes.stop()
                for path, result, note in (
                    (
                        STEADY,
                        steady,
                        f"ONNX in the {where}; 1 client, new stream every {STREAM_REQUESTS} requests",
                    ),
                    (
                        THROUGH_UPDATES,
                        during,
                        f"ONNX in the {where}; {changes.done} updates ({UPDATE_EVERY:g} s apart) while "
                        f"streaming; {during.failures} failed requests",
                    ),
                ):
                    cell = Cell(
                        "A" if where == "front door" else "A-remote",
                        path,
                        1,
                        len(result.latencies),
                        result.rows_per_s,
                        result.percentile(50),
                        result.percentile(99),
                        note,
                    )
                    print(
                        f"  {cell.model} {path:<24} p50 {cell.p50_ms:.2f} ms  p99 {cell.p99_ms:.2f} ms  "
                        f"({cell.requests} req; {note})",
                        flush=True,
                    )
                    cells.append(cell)
                if during.failures:
                    raise RuntimeError(
                        f"{during.failures} requests failed during updates: {during.errors[:3]}"
                    )
        finally:
            ctx.processes.stop(server.process)
    return cells


class Result:
    def __init__(self, latencies: list[float], seconds: float, failures: int, errors: list[str]) -> None:
        self.latencies = latencies
        self.rows_per_s = len(latencies) / seconds if seconds else 0.0
        self.failures = failures
        self.errors = errors

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else 0.0


class Streamer:
    """One client: 1-row requests without pause, a new stream every STREAM_REQUESTS requests."""

    def __init__(
        self, location: str, name: str, batch: pa.RecordBatch, output: str, expected: np.ndarray
    ) -> None:
        self.conn = flight.connect(location, middleware=flight_middleware())
        self.descriptor = flight.FlightDescriptor.for_path(name, "outputs")
        self.batch = batch
        self.output = output
        self.expected = expected

    def run(self, duration: float) -> Result:
        latencies: list[float] = []
        failures = 0
        errors: list[str] = []
        started = time.perf_counter()
        end = started + duration
        while time.perf_counter() < end:
            try:
                writer, reader = self.conn.do_exchange(self.descriptor)
                with writer:
                    writer.begin(self.batch.schema)
                    for _ in range(STREAM_REQUESTS):
                        sent = time.perf_counter()
                        writer.write_batch(self.batch)
                        chunk = reader.read_chunk()
                        latencies.append(time.perf_counter() - sent)
                        got = output_matrix([chunk.data], self.output)
                        if not np.allclose(got, self.expected, rtol=1e-4, atol=1e-5):
                            raise AssertionError(f"wrong answer {got} for {self.expected}")
                    writer.done_writing()
            except Exception as error:
                failures += 1
                errors.append(f"{type(error).__name__}: {error}")
        return Result(latencies, time.perf_counter() - started, failures, errors)


class Updates:
    """Updates the deployment back and forth between versions every UPDATE_EVERY seconds (waiting for
    each to go live) on a thread of its own."""

    def __init__(self, deployer: Deployer, name: str, model_id: int, versions: list[int]) -> None:
        self.client = deployer.client
        self.workspace_id = deployer.workspace_id
        self.name = name
        self.model_id = model_id
        self.versions = versions
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="updates")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_SECONDS)

    def _run(self) -> None:
        while not self._stop.wait(UPDATE_EVERY):
            version = self.versions[self.done % len(self.versions)]
            request = deployment_pb2.UpdateDeploymentRequest(
                workspace_id=self.workspace_id,
                name=self.name,
                steps=[deployment_pb2.StepSpec(model_id=self.model_id, version=version)],
                reason="bench",
            )
            self.client.deployments.UpdateDeployment(request, timeout=WAIT_SECONDS)
            done = self.client.wait_deployment(self.name, timeout=WAIT_SECONDS)
            if done.revision < 2 or "failed" in done.status_reason:
                raise RuntimeError(f"update failed: {done.status_reason}")
            self.done += 1
