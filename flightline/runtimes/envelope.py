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


def envelope(
    inputs: pa.RecordBatch, outputs: pa.RecordBatch, *, echo: bool = True, schema: pa.Schema | None = None
) -> pa.RecordBatch:
    """Wraps model outputs (and, with `echo`, the inputs) in the result format.

    `schema` may pass a precomputed `envelope_schema(...)` to skip rebuilding it per batch."""
    if schema is None:
        schema = envelope_schema(inputs.schema, outputs.schema, echo)
    if not echo:
        return pa.RecordBatch.from_arrays(outputs.columns, schema=schema)
    rows = outputs.num_rows
    now = (time.time_ns() // 1_000_000).to_bytes(8, "little", signed=True) * rows
    columns = [
        pa.Array.from_buffers(TIME.type, rows, [None, pa.py_buffer(now)]),
        *inputs.columns,
        *outputs.columns,
        pa.Array.from_buffers(CHECK_FAILURES.type, rows, [None, _zeros(rows * 4)]),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


_zero_buffer = pa.py_buffer(np.zeros(1 << 16, dtype=np.uint8))


def _zeros(size: int) -> pa.Buffer:
    """A shared read-only buffer of at least `size` zero bytes (grown on demand, never written)."""
    global _zero_buffer
    # One read of the global: another thread may swap in a new buffer, possibly smaller than `size`.
    buffer = _zero_buffer
    if buffer.size < size:
        # np.zeros maps untouched zero pages, so even a huge buffer costs nothing until read.
        buffer = pa.py_buffer(np.zeros(max(size, 2 * buffer.size), dtype=np.uint8))
        _zero_buffer = buffer
    return buffer
