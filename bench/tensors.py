"""Arrow <-> numpy for tensors, zero-copy both ways: fixed-size-list columns are (rows, width) matrices."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

# Requests larger than this are split into record batches of about this size on one stream.
TARGET_BATCH_BYTES = 8 * 1024 * 1024


def to_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list<float32>[w] column as a read-only (rows, w) view of its buffer."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    # flatten() honours a sliced array's offset, where .values would not.
    matrix: np.ndarray = column.flatten().to_numpy(zero_copy_only=True).reshape(len(column), width)
    return matrix


def from_matrix(matrix: np.ndarray, list_type: pa.DataType | None = None) -> pa.Array:
    """A (rows, w) array as a fixed_size_list column (1-D arrays stay flat), without copying."""
    if matrix.ndim == 1:
        return pa.array(matrix)
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    if list_type is not None:
        return pa.FixedSizeListArray.from_arrays(flat, type=list_type)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def outputs_batch(outputs: Mapping[str, np.ndarray]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({name: from_matrix(value) for name, value in outputs.items()})


def request_batches(matrix: np.ndarray, schema: pa.Schema) -> list[pa.RecordBatch]:
    """One input column built from `matrix` with the field of `schema`, cut into ~8 MB record batches."""
    field = schema.field(0)
    batch = pa.RecordBatch.from_arrays([from_matrix(matrix, field.type)], schema=schema)
    rows_per_batch = max(1, TARGET_BATCH_BYTES // (matrix.shape[1] * matrix.itemsize))
    return [batch.slice(start, rows_per_batch) for start in range(0, batch.num_rows, rows_per_batch)]


def input_schema(name: str, width: int) -> pa.Schema:
    return pa.schema([pa.field(name, pa.list_(pa.float32(), width))])


def output_matrix(batches: list[pa.RecordBatch], output: str) -> np.ndarray:
    """The named model output from result batches, whether it is called `output` or `out.output`."""
    table = pa.Table.from_batches(batches)
    for name in (output, f"out.{output}"):
        if name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                return to_matrix(column)
            values: np.ndarray = column.to_numpy()
            return values
    raise KeyError(f"no column {output!r} or 'out.{output}' in results: {table.column_names}")
