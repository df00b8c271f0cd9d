"""The inference result format of the product: one row per input row with the columns
`time` (request time, UTC), `in.<column>` (the inputs, echoed), `out.<column>` (the model outputs) and
`check_failures` (always 0 here: validation checks are not evaluated by the runtime).

Building an envelope copies no data: input and output arrays are reused as they are."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

TIME = pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False)
CHECK_FAILURES = pa.field("check_failures", pa.int32(), nullable=False)
IN_PREFIX = "in."
OUT_PREFIX = "out."


def envelope_schema(input_schema: pa.Schema, output_schema: pa.Schema, echo: bool = True) -> pa.Schema:
    """The schema of `envelope(...)` for batches of these schemas."""
    outputs = [f.with_name(OUT_PREFIX + f.name) for f in output_schema]
    if not echo:
        return pa.schema(outputs)
    inputs = [f.with_name(IN_PREFIX + f.name) for f in input_schema]
    return pa.schema([TIME, *inputs, *outputs, CHECK_FAILURES])


def envelope(inputs: pa.RecordBatch, outputs: pa.RecordBatch, *, echo: bool = True,
             schema: pa.Schema | None = None) -> pa.RecordBatch:
    """Wraps model outputs (and, with `echo`, the inputs) in the result format.

    `schema` may pass a precomputed `envelope_schema(...)` to skip rebuilding it per batch."""
    if schema is None:
        schema = envelope_schema(inputs.schema, outputs.schema, echo)
    if not echo:
        return pa.RecordBatch.from_arrays(outputs.columns, schema=schema)
    rows = outputs.num_rows
    now = np.full(rows, time.time_ns() // 1_000_000, dtype=np.int64)
    # np.zeros maps untouched zero pages, so large batches pay nothing for the column.
    zeros = np.zeros(rows, dtype=np.int32)
    columns = [pa.array(now, type=TIME.type), *inputs.columns, *outputs.columns, pa.array(zeros)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
