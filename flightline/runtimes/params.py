"""Per-request model parameters (MLflow's `params`, e.g. a decision threshold) over Arrow Flight.

The one form, for every client language: a request record batch may carry Flight *app metadata*
(pyarrow: `writer.write_with_metadata(batch, params_metadata({"threshold": 0.7}))`) holding an Arrow IPC
stream of ONE record batch of ONE row whose columns are the parameters: `{"threshold": float64}`,
`{"top_k": int64, "labels": list<string>}`. The parameters apply to that request batch only; a batch
without metadata runs with the model's defaults. Nothing is JSON and nothing is sticky, so a stream
may vary the parameters batch by batch (a client that wants fixed ones attaches the same bytes each
time; encoding once and reusing the buffer costs nothing per batch).

Request-side app metadata is free for this; app metadata on RESULT batches is reserved for "which version
answered" (the deployment's rollout), never for parameters.

The front door forwards the bytes unchanged to every step of the deployment; each step's runtime takes
the parameters its model declares (`Runtime.params_schema`, from the MLflow signature's params schema)
and ignores the rest, as MLflow does for a model without a params schema. A runtime that declares
parameters refuses (INVALID_ARGUMENT, naming the parameter) a value that cannot be cast to the declared
type; `decode` refuses bytes that are not one one-row batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pyarrow as pa

from flightline.runtimes.base import InvalidInput

# A parameters batch larger than this is refused: parameters are a few scalars, not data.
MAX_PARAMS_BYTES: Final = 64 << 10


def params_metadata(params: Mapping[str, Any] | pa.RecordBatch) -> pa.Buffer:
    """The app metadata carrying `params` (a mapping of scalars or lists, or a one-row batch)."""
    batch = params if isinstance(params, pa.RecordBatch) else _one_row(params)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def decode(raw: bytes | pa.Buffer | None) -> pa.RecordBatch | None:
    """The parameters batch of a request's app metadata; None when there is none. InvalidInput when the
    bytes are not an Arrow IPC stream of one one-row batch."""
    if raw is None or len(raw) == 0:
        return None
    if len(raw) > MAX_PARAMS_BYTES:
        raise InvalidInput(f"request parameters (app metadata) exceed {MAX_PARAMS_BYTES} bytes")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(raw) if isinstance(raw, bytes) else raw).read_all()
    except (pa.ArrowException, OSError):
        raise InvalidInput(
            "request app metadata is not an Arrow IPC stream of parameters (one batch of one row)"
        ) from None
    if table.num_rows != 1:
        raise InvalidInput(f"request parameters must be one row, got {table.num_rows}")
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else None


def resolve(params: pa.RecordBatch | None, schema: pa.Schema | None) -> dict[str, Any]:
    """The parameters a model declared in `schema`, cast to its types, as Python values; names it does not
    declare are dropped. InvalidInput naming a parameter whose value does not fit its type."""
    if params is None or schema is None or len(schema) == 0:
        return {}
    values: dict[str, Any] = {}
    for field in schema:
        index = params.schema.get_field_index(field.name)
        if index < 0:
            continue
        column = params.column(index)
        try:
            cast = column.cast(field.type) if not column.type.equals(field.type) else column
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InvalidInput(
                f"parameter {field.name!r} is {column.type}, the model takes {field.type}"
            ) from None
        values[field.name] = cast[0].as_py()
    return values


def _one_row(params: Mapping[str, Any]) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_pydict({name: [value] for name, value in params.items()})
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"parameters must be scalars or lists of one type: {exc}") from exc
