"""Measuring a Flight `do_exchange` endpoint over one long-lived stream (bare reference and Flightline)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight

from bench.context import RunContext
from bench.flight_stream import ExchangeStream
from bench.measure import Call, Cell, Check, measure_sizes
from bench.models import BenchModel
from bench.tensors import output_matrix, request_batches


def measure_exchange(
    model: BenchModel,
    path: str,
    ctx: RunContext,
    location: str,
    descriptor: flight.FlightDescriptor,
    schema: pa.Schema,
) -> list[Cell]:
    with ExchangeStream(location, descriptor, schema) as stream:

        def prepare(rows: int) -> tuple[Call, Check]:
            batches = request_batches(model.inputs(rows), schema)

            def check(result: object) -> None:
                assert isinstance(result, list)
                ctx.check_close(model, rows, output_matrix(result, model.primary_output))

            return lambda: stream.request(batches), check

        return measure_sizes(model.key, path, ctx.sizes, ctx.budget, prepare)
