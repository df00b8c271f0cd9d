"""The data rules a request batch must follow before any model sees it, and the zero-copy bridge between
fixed-size-list columns and numpy tensors.

The rules (each failure is an `InvalidInput` naming the column):
- the batch has exactly the columns of the model's input schema, each of the declared type;
- every tensor column is fixed-size: a variable-size `list` column is accepted only when every row has the
  expected length, and is then viewed as a fixed-size list (no copy of the values);
- a tensor holds one dtype: union, struct or map values (how mixed types arrive in Arrow) are refused;
- tensors hold no nulls.

An *open* schema (no fields) means the runtime declared no input schema: column names and types are not
matched, but list columns must still be regular, single-typed and null-free.

All checks are vectorised (schema compares, null counts, numpy over list offsets); none walks rows in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.types as pt

from flightline.runtimes.base import InvalidInput

_NUMERIC = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
_NUMPY_DTYPES: dict[pa.DataType, np.dtype] = {pa.from_numpy_dtype(d): np.dtype(d) for d in _NUMERIC}


def numpy_dtype(leaf: pa.DataType) -> np.dtype:
    """The numpy dtype of a tensor leaf type (object for strings and other non-numeric leaves), without
    pyarrow's pandas shim, which family environments do not have."""
    if pt.is_boolean(leaf):
        return np.dtype(bool)
    return _NUMPY_DTYPES.get(leaf, np.dtype(object))


def is_open(schema: pa.Schema) -> bool:
    """True for the empty schema, which a runtime uses to say "I accept (or produce) any columns"."""
    return len(schema) == 0


def tensor_type(leaf: pa.DataType, shape: tuple[int, ...]) -> pa.DataType:
    """The column type of a tensor of per-row `shape`: nested fixed-size lists, or `leaf` for a scalar."""
    result = leaf
    for width in reversed(shape):
        result = pa.list_(result, width)
    return result


def tensor_shape(column_type: pa.DataType) -> tuple[pa.DataType, tuple[int, ...]]:
    """The inverse of `tensor_type`: (leaf type, per-row shape) of a possibly nested fixed-size list."""
    shape: list[int] = []
    while pt.is_fixed_size_list(column_type):
        shape.append(column_type.list_size)
        column_type = column_type.value_type
    return column_type, tuple(shape)


def as_tensor(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The read-only numpy view (rows, *shape) of a null-free scalar or (nested) fixed-size-list column.

    Zero-copy for numeric leaves; booleans (bit-packed in Arrow) and strings are copied."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    shape: list[int] = []
    while pt.is_fixed_size_list(array.type):
        width = array.type.list_size
        shape.append(width)
        # `.values` ignores the slice offset of the list array, so cut the used range out explicitly.
        array = array.values.slice(array.offset * width, len(array) * width)
    dtype = _NUMPY_DTYPES.get(array.type)
    if dtype is not None:
        # np.frombuffer rather than to_numpy(): Flight hands over buffers at arbitrary addresses, and
        # to_numpy() of an unaligned buffer takes ~10 ms (it goes through the pandas machinery).
        data = array.buffers()[1]
        flat = np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    else:
        flat = array.to_numpy(zero_copy_only=False)
    tensor: np.ndarray = flat.reshape(rows, *shape)
    return tensor


_NUMERIC_KINDS = frozenset("iuf")


def from_tensor(tensor: np.ndarray) -> pa.Array:
    """The Arrow column of a (rows, *shape) array: plain for 1-D, nested fixed-size lists otherwise.

    Zero-copy for numeric arrays already C-contiguous: the Arrow array keeps the numpy buffer alive."""
    if tensor.ndim == 0:
        raise ValueError("a tensor column needs a leading row dimension")
    flat = np.ascontiguousarray(tensor).reshape(-1)
    if flat.dtype.kind in _NUMERIC_KINDS and flat.dtype.isnative:
        # Wrapping the buffer directly is ~10x cheaper than pa.array() for small tensors.
        column = pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), len(flat), [None, pa.py_buffer(flat)])
    else:
        column = pa.array(flat)
    for width in reversed(tensor.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, width)
    return column


def _is_list(data_type: pa.DataType) -> bool:
    return bool(pt.is_list(data_type) or pt.is_large_list(data_type) or pt.is_fixed_size_list(data_type))


def _is_mixed(data_type: pa.DataType) -> bool:
    return bool(pt.is_union(data_type) or pt.is_struct(data_type) or pt.is_map(data_type))


def _is_tensor(data_type: pa.DataType) -> bool:
    """Columns that must hold no nulls: numbers, booleans and lists of anything."""
    return bool(
        pt.is_integer(data_type)
        or pt.is_floating(data_type)
        or pt.is_boolean(data_type)
        or _is_list(data_type)
    )


def _first_true(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _null_error(name: str, array: pa.Array, rows_per_item: int) -> InvalidInput:
    item = _first_true(array.is_null().to_numpy(zero_copy_only=False))
    return InvalidInput(
        f"column '{name}' has a null at row {item // rows_per_item}; tensors cannot hold nulls"
    )


def _check_no_nulls(name: str, column: pa.Array) -> None:
    """Refuses nulls at any nesting level of a tensor column; reports the first row holding one."""
    array = column
    # How to map an index one level down back up: a width (fixed-size list) or the offsets (variable).
    levels: list[int | np.ndarray] = []
    while True:
        if array.null_count:
            item = _first_true(array.is_null().to_numpy(zero_copy_only=False))
            for level in reversed(levels):
                if isinstance(level, int):
                    item //= level
                else:
                    item = int(np.searchsorted(level, item, side="right")) - 1
            raise InvalidInput(f"column '{name}' has a null at row {item}; tensors cannot hold nulls")
        if not _is_list(array.type):
            return
        if pt.is_fixed_size_list(array.type):
            width = array.type.list_size
            levels.append(max(width, 1))
            array = array.values.slice(array.offset * width, len(array) * width)
        else:
            offsets = array.offsets.to_numpy()
            levels.append(offsets - offsets[0])
            array = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def _regular_values(
    name: str, array: pa.Array, width: int | None, rows_per_item: int, depth: int
) -> tuple[pa.Array, int]:
    """The child values of a variable-size list whose items all have `width` values (or all the same
    length, when `width` is None), and that width. Raises InvalidInput for nulls or ragged items."""
    if array.null_count:
        raise _null_error(name, array, rows_per_item)
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    if width is None:
        width = int(lengths[0]) if len(lengths) else 0
    bad = lengths != width
    if bad.any():
        item = _first_true(bad)
        where = "" if depth == 0 else f" in a nested list at depth {depth + 1}"
        raise InvalidInput(
            f"column '{name}' is ragged: row {item // rows_per_item} has {int(lengths[item])} "
            f"values{where}, expected {width}"
        )
    return array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])), width


def _same_kind(got: pa.DataType, expected: pa.DataType) -> bool:
    """Text (or bytes) in another layout: pandas 3 makes `large_string` columns of what models declare as
    `string`, and Arrow's view types hold the same values. Cast, never refused."""
    kinds = (
        (pt.is_string, pt.is_large_string, pt.is_string_view),
        (pt.is_binary, pt.is_large_binary, pt.is_binary_view),
    )
    return any(any(k(got) for k in kind) and any(k(expected) for k in kind) for kind in kinds)


def _fixable(got: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column of type `got` can become `expected` by viewing regular lists as fixed-size ones,
    or by casting text to the declared text layout (decided on types alone, so a wrong element type is
    reported as such before any raggedness)."""
    if got.equals(expected) or _same_kind(got, expected):
        return True
    if not pt.is_fixed_size_list(expected) or not _is_list(got):
        return False
    if pt.is_fixed_size_list(got) and got.list_size != expected.list_size:
        return False
    return _fixable(got.value_type, expected.value_type)


def _fixed_to(name: str, array: pa.Array, expected: pa.DataType, rows_per_item: int, depth: int) -> pa.Array:
    """`array` (of a type `_fixable` to `expected`) as type `expected`, turning regular variable-size lists
    into fixed-size ones without copying values."""
    if array.type.equals(expected):
        return array
    if _same_kind(array.type, expected):
        return array.cast(expected)  # the same values with offsets of the declared width
    width = expected.list_size
    if pt.is_fixed_size_list(array.type):
        if array.null_count:  # rebuilding the list below would drop its validity bitmap
            raise _null_error(name, array, rows_per_item)
        values = array.values.slice(array.offset * width, len(array) * width)
    else:
        values, _ = _regular_values(name, array, width, rows_per_item, depth)
    child = _fixed_to(name, values, expected.value_type, rows_per_item * width, depth + 1)
    return pa.FixedSizeListArray.from_arrays(child, width)


def _fixed_any(name: str, array: pa.Array, rows_per_item: int, depth: int) -> pa.Array:
    """A list column of an open schema as nested fixed-size lists, whatever its widths, if regular."""
    if not _is_list(array.type):
        if _is_mixed(array.type) or pt.is_null(array.type):
            raise InvalidInput(f"column '{name}' mixes value types ({array.type}); a tensor holds one dtype")
        return array
    if pt.is_fixed_size_list(array.type):
        if array.null_count:  # rebuilding the list below would drop its validity bitmap
            raise _null_error(name, array, rows_per_item)
        width = array.type.list_size
        values = array.values.slice(array.offset * width, len(array) * width)
    else:
        values, width = _regular_values(name, array, None, rows_per_item, depth)
    child = _fixed_any(name, values, rows_per_item * max(width, 1), depth + 1)
    return pa.FixedSizeListArray.from_arrays(child, width)


class BatchRules:
    """The rules for one model's input schema. Built once per model, so checking a batch that already has
    the exact schema costs one schema compare plus a null count per tensor column."""

    def __init__(self, schema: pa.Schema, optional: frozenset[str] = frozenset()) -> None:
        """`optional` names input columns a batch may leave out (they arrive as all-null columns) and
        whose rows may be null: per-row arguments such as a pipeline's `top_k`, not tensors."""
        self.schema = schema
        self._open = is_open(schema)
        self._optional = optional
        self._tensor_columns = [
            i for i, f in enumerate(schema) if _is_tensor(f.type) and f.name not in optional
        ]
        self._names = set(schema.names)

    def check(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Returns the batch, normalised to the expected schema, or raises InvalidInput."""
        if self._open:
            return self._check_open(batch)
        if batch.schema.equals(self.schema):
            for i in self._tensor_columns:
                _check_no_nulls(self.schema.names[i], batch.column(i))
            return batch
        return self._normalise(batch)

    def _normalise(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        got = batch.schema.names
        if len(set(got)) != len(got):
            duplicates = sorted({n for n in got if got.count(n) > 1})
            raise InvalidInput(f"column '{duplicates[0]}' appears more than once")
        missing = [n for n in self.schema.names if n not in got and n not in self._optional]
        if missing:
            raise InvalidInput(
                f"column '{missing[0]}' is missing; the model expects columns {self.schema.names}"
            )
        unexpected = [n for n in got if n not in self._names]
        if unexpected:
            raise InvalidInput(
                f"column '{unexpected[0]}' is unexpected; the model expects columns {self.schema.names}"
            )
        columns = []
        for field in self.schema:
            if field.name not in got:  # an optional column left out: null in every row
                columns.append(pa.nulls(batch.num_rows, field.type))
                continue
            column = batch.column(field.name)
            if pt.is_null(column.type) and field.name in self._optional:  # all-null, e.g. from pandas
                columns.append(pa.nulls(batch.num_rows, field.type))
                continue
            if pt.is_union(column.type) and not pt.is_union(field.type):
                raise InvalidInput(
                    f"column '{field.name}' mixes value types ({column.type}); expected {field.type}"
                )
            if not _fixable(column.type, field.type):
                raise InvalidInput(f"column '{field.name}' has type {column.type}, expected {field.type}")
            converted = _fixed_to(field.name, column, field.type, 1, 0)
            if _is_tensor(field.type) and field.name not in self._optional:
                _check_no_nulls(field.name, converted)
            columns.append(converted)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _check_open(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns: list[pa.Array] = []
        changed = False
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if _is_mixed(column.type) and not pt.is_struct(column.type):
                raise InvalidInput(
                    f"column '{name}' mixes value types ({column.type}); a column holds one dtype"
                )
            if _is_list(column.type):
                fixed = _fixed_any(name, column, 1, 0)
                changed = changed or fixed is not column
                column = fixed
            if _is_tensor(column.type):
                _check_no_nulls(name, column)
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, names=batch.schema.names) if changed else batch


def check_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """One-off form of `BatchRules(schema).check(batch)`."""
    return BatchRules(schema).check(batch)


def check_schema(what: str, schema: pa.Schema, *, variable_lists: bool = False) -> None:
    """A declared schema must describe what the rules above accept, so a model is never registered
    with a contract no batch can meet: tensors of a fixed shape (nested fixed-size lists; a
    variable-size list allows ragged rows) and of one dtype (no union, struct or map). A runtime that
    takes ragged data (BYOP) allows variable-size lists (`variable_lists`)."""
    for field in schema:
        column_type = field.type
        while True:
            if _is_mixed(column_type):
                raise InvalidInput(
                    f"{what}: field '{field.name}' mixes value types ({field.type}); a tensor holds one dtype"
                )
            if (pt.is_list(column_type) or pt.is_large_list(column_type)) and variable_lists:
                column_type = column_type.value_type
                continue
            if pt.is_list(column_type) or pt.is_large_list(column_type):
                raise InvalidInput(
                    f"{what}: field '{field.name}' is a variable-size list ({field.type}); tensors have a "
                    "fixed shape: use a fixed-size list, e.g. pa.list_(pa.float32(), 29)"
                )
            if not pt.is_fixed_size_list(column_type):
                break
            column_type = column_type.value_type
