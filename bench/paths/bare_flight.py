"""The bare reference: the same ONNX session behind a minimal Flight server (one hop, nothing else)."""

from __future__ import annotations

import sys

import pyarrow.flight as flight

from bench.context import RunContext
from bench.measure import Cell, best_of
from bench.models import BenchModel
from bench.ort_options import THREAD_VARIANTS
from bench.paths.exchange import measure_exchange
from bench.tensors import input_schema

NAME = "bare-flight"


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    return best_of(
        NAME, {label: run_variant(model, ctx, label, threads) for label, threads in THREAD_VARIANTS.items()}
    )


def run_variant(model: BenchModel, ctx: RunContext, label: str, threads: int) -> list[Cell]:
    server = ctx.processes.start(
        f"bare-flight-{model.key}-{threads}",
        [sys.executable, "-m", "bench.paths.bare_flight_server", str(model.onnx_path), str(threads)],
    )
    try:
        port = int(server.wait_for_line("READY ", timeout=60).split()[1])
        schema = input_schema(model.input_name, model.width)
        location = f"grpc+tcp://127.0.0.1:{port}"
        descriptor = flight.FlightDescriptor.for_path("bare")
        return measure_exchange(model, f"{NAME} ({label})", ctx, location, descriptor, schema)
    finally:
        ctx.processes.stop(server)
