"""Issue 7's serving cells, each on its own `flightline serve`: many concurrent 1-row clients (from
several client processes, bench/clients.py) on native ONNX in the front door and out of process,
adaptive batching on a model whose per-call cost dominates, and the resident memory of 20 deployed
sklearn-pickle models. Server knowledge (settings, features, processes) is in bench/flightline_server.py."""

from __future__ import annotations

import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from bench import clients
from bench.context import RunContext
from bench.flight_stream import ExchangeStream
from bench.flightline_server import (
    IN_PROCESS_SETTING,
    OUTPUTS_MODE,
    Batching,
    Deployer,
    FlightlineServer,
    NotInThisBuild,
    batching_supported,
    input_schema_of,
    rss_kib,
    start_server,
)
from bench.measure import Cell, measure
from bench.models import (
    STEP_WIDTH,
    BenchModel,
    build_kernel_ridge,
    build_python_step,
    python_step_score,
)
from bench.tensors import from_matrix, output_matrix

CONCURRENT_FRONT_DOOR = "concurrent-front-door"
CONCURRENT_OUT_OF_PROCESS = "concurrent-out-of-process"
CONCURRENT_CLIENTS = 64
STEP_MODEL = "P"  # the Python step with a fixed per-call cost
STEP_BATCH_CALL = "step-batch-call"  # one client sending max_batch_rows rows: the time of one batch
STEP_UNBATCHED = "step-unbatched"
STEP_BATCHED = "step-batched"
BATCHING_CLIENTS = 32
BATCHING = Batching(max_batch_rows=32, max_delay_ms=5)
BATCHING_MISSING = "batching: not available in this build"
MEMORY_MODEL = "S"  # sklearn pickles served by the sklearn runtime
MEMORY_RUNTIMES = "memory-runtimes"
MEMORY_FRONT_DOOR = "memory-front-door"
SETTLE_SECONDS = 2.0  # after the last deploy, for preparation subprocesses to exit before RSS is read


def seconds(ctx: RunContext) -> tuple[float, float]:
    """Timed and warm-up seconds of a concurrent cell: a few of the budget's single-stream cells."""
    return max(1.5, 3 * ctx.budget.cell_seconds), max(0.3, 3 * ctx.budget.warmup_seconds)


def one_row_requests(matrix: np.ndarray, schema: pa.Schema) -> tuple[bytes, ...]:
    """Row i of `matrix` as client i's 1-row request, with the deployment's input field."""
    field = schema.field(0)
    return tuple(
        clients.ipc_batch(
            pa.RecordBatch.from_arrays([from_matrix(matrix[i : i + 1], field.type)], schema=schema)
        )
        for i in range(len(matrix))
    )


def drive(
    ctx: RunContext,
    model: str,
    path: str,
    deployment_location: str,
    name: str,
    requests: tuple[bytes, ...],
    expected: tuple[np.ndarray, ...],
    output: str,
    note: str,
) -> Cell:
    timed, warmup = seconds(ctx)
    load = clients.Load(deployment_location, (name, OUTPUTS_MODE), requests, expected, output, timed, warmup)
    result = clients.run(load, ctx.client_processes)
    cell = Cell(
        model,
        path,
        1,
        result.requests,
        result.rows_per_s,
        result.p50_ms,
        result.p99_ms,
        f"{result.clients} clients in {result.processes} processes; {note}",
    )
    print(
        f"  {model} {path:<26} {result.clients} clients: {cell.rows_per_s:,.0f} rows/s  "
        f"p50 {cell.p50_ms:.2f} ms  p99 {cell.p99_ms:.2f} ms  ({cell.requests} req)",
        flush=True,
    )
    return cell


def run_concurrent(models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    """Model A with 64 concurrent 1-row clients: ONNX in the front door, then the same model out of
    process (the front door forwarding to a runtime server: the path every user-code model takes)."""
    model = next((m for m in models if m.key == "A"), None)
    if model is None:
        print("  concurrent: needs model A (--models A)", flush=True)
        return [Cell.skipped("A", CONCURRENT_FRONT_DOOR, 1, "skipped: needs model A (--models A)")]
    variants: list[tuple[str, dict[str, object], str]] = [
        (CONCURRENT_FRONT_DOOR, {}, "ONNX in the front door"),
        (CONCURRENT_OUT_OF_PROCESS, {IN_PROCESS_SETTING: False}, "ONNX in a runtime server"),
    ]
    cells: list[Cell] = []
    for path, settings, note in variants:
        print(f"== model A, {path}", flush=True)
        try:
            server = start_server(ctx.processes, ctx.work_dir / path, path, **settings)
        except NotInThisBuild as missing:
            print(f"  {path}: not available in this build ({missing})", flush=True)
            cells.append(Cell.skipped(model.key, path, 1, f"not available in this build: {missing}"))
            continue
        try:
            with Session(server) as deployer:
                name = "bench-a"
                version = deployer.upload(model.onnx_path, name, "onnx")
                deployment = deployer.deploy(name, version.model_id)
                schema = input_schema_of(deployment)
                rows = ctx.expected(model, CONCURRENT_CLIENTS)[model.primary_output]
                requests = one_row_requests(model.inputs(CONCURRENT_CLIENTS), schema)
                expected = tuple(rows[i : i + 1] for i in range(CONCURRENT_CLIENTS))
                cells.append(
                    drive(
                        ctx,
                        model.key,
                        path,
                        deployment.flight_location,
                        name,
                        requests,
                        expected,
                        model.primary_output,
                        note,
                    )
                )
        finally:
            ctx.processes.stop(server.process)
    return cells


class Session:
    """A Deployer on a server, closed on exit."""

    def __init__(self, server: FlightlineServer) -> None:
        self.deployer = Deployer(server.grpc_address)

    def __enter__(self) -> Deployer:
        return self.deployer

    def __exit__(self, *exc: object) -> None:
        self.deployer.close()


def step_schemas() -> tuple[pa.Schema, pa.Schema]:
    inputs = pa.schema([pa.field("inputs", pa.list_(pa.float32(), STEP_WIDTH))])
    return inputs, pa.schema([pa.field("score", pa.float64())])


def run_batching(models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    """A Python step with a fixed few-ms cost per call, 32 concurrent 1-row clients: unbatched, then
    (when this build has it) with adaptive batching; plus the time of one 32-row call, the p99 bound."""
    print(f"== model {STEP_MODEL} (Python step, fixed cost per call), adaptive batching", flush=True)
    server = start_server(ctx.processes, ctx.work_dir / "batching", "flightline-batching")
    try:
        with Session(server) as deployer:
            input_schema, output_schema = step_schemas()
            script = build_python_step(ctx.work_dir / "models")
            version = deployer.upload(
                script, "bench-step", "python", input_schema=input_schema, output_schema=output_schema
            )
            inputs = np.random.default_rng(11).standard_normal(
                (BATCHING_CLIENTS, STEP_WIDTH), dtype=np.float32
            )
            scores = python_step_score(inputs)
            requests = one_row_requests(inputs, input_schema)
            expected = tuple(scores[i : i + 1] for i in range(BATCHING_CLIENTS))
            unbatched = deployer.deploy("bench-step", version.model_id)
            cells = [batch_call(ctx, unbatched.flight_location, "bench-step", inputs, input_schema)]
            cells.append(
                drive(
                    ctx,
                    STEP_MODEL,
                    STEP_UNBATCHED,
                    unbatched.flight_location,
                    "bench-step",
                    requests,
                    expected,
                    "score",
                    "unbatched",
                )
            )
            if not batching_supported():
                print(f"  {BATCHING_MISSING}", flush=True)
                cells.append(Cell.skipped(STEP_MODEL, STEP_BATCHED, 1, BATCHING_MISSING))
                return cells
            batched = deployer.deploy("bench-step-batched", version.model_id, BATCHING)
            cells.append(
                drive(
                    ctx,
                    STEP_MODEL,
                    STEP_BATCHED,
                    batched.flight_location,
                    "bench-step-batched",
                    requests,
                    expected,
                    "score",
                    f"max_batch_rows {BATCHING.max_batch_rows}, max_delay_ms {BATCHING.max_delay_ms}",
                )
            )
            return cells
    finally:
        ctx.processes.stop(server.process)


def batch_call(ctx: RunContext, location: str, name: str, inputs: np.ndarray, schema: pa.Schema) -> Cell:
    """One client sending max_batch_rows rows per request: what one merged model call costs."""
    rows = BATCHING.max_batch_rows
    batch = pa.RecordBatch.from_arrays([from_matrix(inputs[:rows], schema.field(0).type)], schema=schema)
    expected = python_step_score(inputs[:rows])

    def check(result: object) -> None:
        assert isinstance(result, list)
        np.testing.assert_allclose(output_matrix(result, "score"), expected, rtol=1e-6)

    descriptor = flight.FlightDescriptor.for_path(name, OUTPUTS_MODE)
    with ExchangeStream(location, descriptor, schema) as stream:
        cell = measure(STEP_MODEL, STEP_BATCH_CALL, rows, lambda: stream.request([batch]), ctx.budget, check)
    print(
        f"  {STEP_MODEL} {STEP_BATCH_CALL:<26} {rows} rows, one client: p50 {cell.p50_ms:.2f} ms", flush=True
    )
    return cell


def run_memory(models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    """`ctx.memory_models` (20; 5 with --quick) distinct sklearn pickles (KernelRidge: served by the
    sklearn runtime, not converted), each deployed and answering once; then the resident memory of
    the runtime processes below the server (however many it runs) and of the server process itself
    (control plane and front door)."""
    count = ctx.memory_models
    print(f"== model {MEMORY_MODEL} (sklearn pickles), memory of {count} deployments", flush=True)
    server = start_server(ctx.processes, ctx.work_dir / "memory", "flightline-memory")
    try:
        with Session(server) as deployer:
            folder = ctx.work_dir / "models" / "memory"
            schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 6))])

            def deploy(index: int) -> None:
                artifact = build_kernel_ridge(folder, index)
                name = f"bench-memory-{index}"
                version = deployer.upload(artifact, name, "sklearn", input_schema=schema)
                if version.runtime != "sklearn":
                    raise RuntimeError(f"{name} is served by {version.runtime!r}, not the sklearn runtime")
                deployment = deployer.deploy(name, version.model_id)
                answer_once(artifact, deployment.flight_location, name)

            started = time.monotonic()
            # Two at a time: uploads and deploys are mostly interpreter start-ups, two cores here.
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(deploy, range(count)))
            print(f"  deployed {count} models in {time.monotonic() - started:.0f} s", flush=True)
        time.sleep(SETTLE_SECONDS)  # a polling pause: preparation subprocesses exit on their own
        pids = server.runtime_pids()
        runtimes_mb = sum(rss_kib(pid) for pid in pids) / 1024
        server_mb = rss_kib(server.pid) / 1024
        note = f"{count} sklearn-pickle deployments"
        cells = [
            Cell(
                MEMORY_MODEL,
                MEMORY_RUNTIMES,
                count,
                len(pids),
                None,
                None,
                None,
                f"{note}; {len(pids)} runtime process{'' if len(pids) == 1 else 'es'}",
                runtimes_mb,
            ),
            Cell(
                MEMORY_MODEL,
                MEMORY_FRONT_DOOR,
                count,
                1,
                None,
                None,
                None,
                f"{note}; the server process (control plane + front door)",
                server_mb,
            ),
        ]
        print(
            f"  RSS: runtimes {runtimes_mb:,.0f} MB in {len(pids)} processes, server {server_mb:,.0f} MB, "
            f"total {runtimes_mb + server_mb:,.0f} MB",
            flush=True,
        )
        return cells
    finally:
        ctx.processes.stop(server.process)


def answer_once(artifact: Path, location: str, name: str) -> None:
    """One request through the front door, checked against the pickle run here: the model is loaded."""
    estimator = pickle.loads(artifact.read_bytes())
    probe = np.random.default_rng(5).standard_normal((4, 6))
    column = pa.FixedSizeListArray.from_arrays(pa.array(probe.reshape(-1)), 6)
    batch = pa.RecordBatch.from_arrays([column], names=["inputs"])
    with ExchangeStream(
        location, flight.FlightDescriptor.for_path(name, OUTPUTS_MODE), batch.schema
    ) as stream:
        result = stream.request([batch])
    np.testing.assert_allclose(
        output_matrix(result, "predictions"), estimator.predict(probe), rtol=1e-4, atol=1e-4
    )
