"""The data rules and the tensor bridge (flightline.runtimes.rules), without any model or network."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flightline.runtimes.base import InvalidInput
from flightline.runtimes.rules import (
    BatchRules,
    as_tensor,
    check_batch,
    from_tensor,
    tensor_shape,
    tensor_type,
)

F32x4 = pa.list_(pa.float32(), 4)
SCHEMA = pa.schema([("x", F32x4), ("w", pa.float32())])


def _batch(x: pa.Array, w: pa.Array | None = None) -> pa.RecordBatch:
    w = pa.array(np.ones(len(x), dtype=np.float32)) if w is None else w
    return pa.record_batch([x, w], names=["x", "w"])


def _data_address(column: pa.Array) -> int:
    """Address of the first value of a (nested) fixed-size list column's leaf buffer."""
    leaf = column
    while pa.types.is_fixed_size_list(leaf.type):
        leaf = leaf.values
    return int(leaf.buffers()[1].address)


def test_as_tensor_is_a_zero_copy_view() -> None:
    data = np.arange(12, dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(data), 4)
    tensor = as_tensor(column)
    assert tensor.shape == (3, 4)
    assert tensor.ctypes.data == _data_address(column)
    np.testing.assert_array_equal(tensor, data.reshape(3, 4))


def test_as_tensor_views_unaligned_buffers() -> None:
    # Flight hands over buffers at arbitrary addresses; the view must still be zero-copy.
    raw = pa.py_buffer(np.arange(4 * 6 + 1, dtype=np.uint8).tobytes() + bytes(3 * 6 * 4))
    unaligned = raw.slice(1, 6 * 4 * 3)
    column = pa.FixedSizeListArray.from_arrays(pa.Array.from_buffers(pa.float32(), 18, [None, unaligned]), 6)
    tensor = as_tensor(column)
    assert tensor.shape == (3, 6)
    assert tensor.ctypes.data == unaligned.address
    np.testing.assert_array_equal(tensor.reshape(-1).view(np.uint8)[:8], np.arange(1, 9, dtype=np.uint8))


def test_as_tensor_respects_slices_of_nested_lists() -> None:
    cube = np.arange(5 * 2 * 3, dtype=np.float64).reshape(5, 2, 3)
    column = from_tensor(cube).slice(2, 2)
    np.testing.assert_array_equal(as_tensor(column), cube[2:4])
    np.testing.assert_array_equal(as_tensor(pa.chunked_array([column])), cube[2:4])


def test_from_tensor_shapes_and_zero_copy() -> None:
    vector = np.arange(3, dtype=np.int64)
    assert from_tensor(vector).type == pa.int64()
    matrix = np.ones((2, 5), dtype=np.float32)
    column = from_tensor(matrix)
    assert column.type == pa.list_(pa.float32(), 5)
    assert _data_address(column) == matrix.ctypes.data
    cube = np.zeros((2, 3, 4), dtype=np.float64)
    assert from_tensor(cube).type == tensor_type(pa.float64(), (3, 4))
    assert tensor_shape(from_tensor(cube).type) == (pa.float64(), (3, 4))
    flags = from_tensor(np.array([[True, False]]))
    assert flags.type == pa.list_(pa.bool_(), 2)
    assert as_tensor(flags).tolist() == [[True, False]]


def test_exact_batch_passes_untouched() -> None:
    batch = _batch(from_tensor(np.zeros((3, 4), np.float32)))
    assert check_batch(batch, SCHEMA) is batch


def test_regular_variable_lists_become_fixed_size_without_copying() -> None:
    values = pa.array(np.arange(8, dtype=np.float32))
    ragged_type = pa.ListArray.from_arrays(pa.array([0, 4, 8], pa.int32()), values)
    checked = check_batch(_batch(ragged_type), SCHEMA)
    assert checked.schema.equals(SCHEMA)
    assert _data_address(checked.column(0)) == int(values.buffers()[1].address)
    np.testing.assert_array_equal(as_tensor(checked.column(0)), np.arange(8).reshape(2, 4))


def test_sliced_variable_lists_keep_their_rows() -> None:
    column = pa.array([[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]], pa.list_(pa.float32())).slice(1)
    checked = check_batch(_batch(column), SCHEMA)
    np.testing.assert_array_equal(as_tensor(checked.column(0)), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_ragged_column_names_the_row() -> None:
    rows = [[1.0] * 4, [1.0] * 4, [1.0] * 4, [1.0, 2.0], [1.0] * 4]
    with pytest.raises(InvalidInput, match=r"column 'x' is ragged: row 3 has 2 values, expected 4"):
        check_batch(_batch(pa.array(rows, pa.list_(pa.float32()))), SCHEMA)


def test_ragged_inner_dimension_names_the_outer_row() -> None:
    schema = pa.schema([("m", tensor_type(pa.float64(), (2, 3)))])
    rows = [[[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5]]]
    batch = pa.record_batch([pa.array(rows, pa.list_(pa.list_(pa.float64())))], names=["m"])
    with pytest.raises(InvalidInput, match=r"column 'm' is ragged: row 1 has 2 values in a nested list"):
        check_batch(batch, schema)
    good = pa.record_batch([pa.array(rows[:1], pa.list_(pa.list_(pa.float64())))], names=["m"])
    np.testing.assert_array_equal(as_tensor(check_batch(good, schema).column(0)), [[[1, 2, 3], [4, 5, 6]]])


def test_missing_and_unexpected_columns() -> None:
    x = from_tensor(np.zeros((1, 4), np.float32))
    with pytest.raises(InvalidInput, match=r"column 'w' is missing"):
        check_batch(pa.record_batch([x], names=["x"]), SCHEMA)
    with pytest.raises(InvalidInput, match=r"column 'extra' is unexpected"):
        check_batch(pa.record_batch([x, pa.array([1.0], pa.float32()), x], names=["x", "w", "extra"]), SCHEMA)
    with pytest.raises(InvalidInput, match=r"column 'x' appears more than once"):
        check_batch(pa.record_batch([x, x], names=["x", "x"]), SCHEMA)


def test_columns_in_another_order_are_reordered() -> None:
    x = from_tensor(np.zeros((1, 4), np.float32))
    checked = check_batch(pa.record_batch([pa.array([1.0], pa.float32()), x], names=["w", "x"]), SCHEMA)
    assert checked.schema.names == ["x", "w"]


def test_wrong_dtype_says_expected_and_got() -> None:
    doubles = from_tensor(np.zeros((1, 4), np.float64))
    with pytest.raises(
        InvalidInput,
        match=r"column 'x' has type fixed_size_list<item: double>\[4\], "
        r"expected fixed_size_list<item: float>\[4\]",
    ):
        check_batch(_batch(doubles), SCHEMA)
    with pytest.raises(InvalidInput, match=r"column 'w' has type int64, expected float"):
        check_batch(_batch(from_tensor(np.zeros((1, 4), np.float32)), pa.array([1])), SCHEMA)
    wrong_width = from_tensor(np.zeros((1, 3), np.float32))
    with pytest.raises(InvalidInput, match=r"column 'x' has type fixed_size_list<item: float>\[3\]"):
        check_batch(_batch(wrong_width), SCHEMA)


def test_text_in_another_arrow_layout_is_cast_to_the_declared_one() -> None:
    """pandas 3 turns str columns into large_string; string views hold the same text. Bytes stay bytes."""
    schema = pa.schema([("text", pa.string()), ("words", pa.list_(pa.string(), 2)), ("raw", pa.binary())])
    batch = pa.record_batch(
        [
            pa.array(["a", "bc"], pa.large_string()),
            pa.array([["x", "y"], ["z", "w"]], pa.list_(pa.string_view())),
            pa.array([b"1", b"22"], pa.large_binary()),
        ],
        names=schema.names,
    )
    checked = check_batch(batch, schema)
    assert checked.schema.equals(schema)
    assert checked.to_pydict() == {
        "text": ["a", "bc"],
        "words": [["x", "y"], ["z", "w"]],
        "raw": [b"1", b"22"],
    }
    as_bytes = pa.record_batch([pa.array([b"a"]), *checked.slice(0, 1).columns[1:]], names=schema.names)
    with pytest.raises(InvalidInput, match=r"column 'text' has type binary, expected string"):
        check_batch(as_bytes, schema)


def test_mixed_types_are_refused() -> None:
    union = pa.UnionArray.from_sparse(
        pa.array([0, 1], pa.int8()), [pa.array([1.0, 0.0], pa.float32()), pa.array(["a", "b"])]
    )
    with pytest.raises(InvalidInput, match=r"column 'w' mixes value types"):
        check_batch(_batch(from_tensor(np.zeros((2, 4), np.float32)), union), SCHEMA)
    strings = pa.array([["1.0", "a", "2", "3"]], pa.list_(pa.string()))
    with pytest.raises(InvalidInput, match=r"column 'x' has type list<item: string>"):
        check_batch(_batch(strings), SCHEMA)


def test_nulls_inside_tensors_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"column 'w' has a null at row 1"):
        check_batch(
            _batch(from_tensor(np.zeros((2, 4), np.float32)), pa.array([1.0, None], pa.float32())), SCHEMA
        )
    inner_null = pa.FixedSizeListArray.from_arrays(pa.array([0, 1, 2, 3, 4, None, 6, 7], pa.float32()), 4)
    with pytest.raises(InvalidInput, match=r"column 'x' has a null at row 1"):
        check_batch(_batch(inner_null), SCHEMA)
    null_row = pa.array([[1.0] * 4, None], pa.list_(pa.float32()))
    with pytest.raises(InvalidInput, match=r"column 'x' has a null at row 1"):
        check_batch(_batch(null_row), SCHEMA)


def test_open_schema_accepts_any_columns_but_keeps_tensor_rules() -> None:
    rules = BatchRules(pa.schema([]))
    batch = pa.record_batch([pa.array([[1.0, 2.0], [3.0, 4.0]]), pa.array(["a", None])], names=["v", "s"])
    checked = rules.check(batch)
    assert checked.schema.field("v").type == pa.list_(pa.float64(), 2)
    assert checked.column(1).null_count == 1  # strings are not tensors: nulls allowed
    with pytest.raises(InvalidInput, match=r"column 'v' is ragged: row 1 has 1 values, expected 2"):
        rules.check(pa.record_batch([pa.array([[1.0, 2.0], [3.0]])], names=["v"]))
    with pytest.raises(InvalidInput, match=r"column 'v' has a null at row 0"):
        rules.check(pa.record_batch([pa.array([[1.0, None]])], names=["v"]))
    union = pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1.0]), pa.array(["a"])])
    with pytest.raises(InvalidInput, match=r"column 'u' mixes value types"):
        rules.check(pa.record_batch([union], names=["u"]))
    scalars = pa.record_batch([pa.array([1, 2])], names=["n"])
    assert rules.check(scalars) is scalars


def test_large_batches_are_checked_without_python_loops() -> None:
    rows = 1_000_000
    offsets = pa.array(np.arange(0, 4 * rows + 1, 4, dtype=np.int32))
    values = pa.array(np.ones(4 * rows, dtype=np.float32))
    column = pa.ListArray.from_arrays(offsets, values)
    checked = check_batch(_batch(column, pa.array(np.zeros(rows, np.float32))), SCHEMA)
    assert as_tensor(checked.column(0)).shape == (rows, 4)
    broken = np.arange(0, 4 * rows + 1, 4, dtype=np.int32)
    broken[rows - 1] -= 1  # row rows-2 loses a value, row rows-1 gains one
    column = pa.ListArray.from_arrays(pa.array(broken), values)
    with pytest.raises(InvalidInput, match=rf"row {rows - 2} has 3 values, expected 4"):
        check_batch(_batch(column, pa.array(np.zeros(rows, np.float32))), SCHEMA)


def test_optional_columns_may_be_left_out_or_hold_nulls() -> None:
    schema = pa.schema([("inputs", pa.list_(pa.float32(), 2)), ("top_k", pa.int64()), ("mode", pa.string())])
    rules = BatchRules(schema, optional=frozenset({"top_k", "mode"}))
    inputs = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4], pa.float32()), 2)
    left_out = rules.check(pa.record_batch([inputs], names=["inputs"]))
    assert left_out.schema.equals(schema)
    assert left_out.column("top_k").null_count == 2 and left_out.column("mode").null_count == 2
    some = rules.check(pa.record_batch([inputs, pa.array([None, 3], pa.int64())], names=["inputs", "top_k"]))
    assert some.column("top_k").to_pylist() == [None, 3]
    all_null = rules.check(pa.record_batch([inputs, pa.nulls(2)], names=["inputs", "mode"]))  # e.g. pandas
    assert all_null.column("mode").type == pa.string()
    with pytest.raises(InvalidInput, match=r"column 'inputs' is missing"):
        rules.check(pa.record_batch([pa.array([1, 2], pa.int64())], names=["top_k"]))
    with pytest.raises(InvalidInput, match=r"column 'inputs' has a null at row 1"):
        rules.check(pa.record_batch([pa.array([[1, 2], None], pa.list_(pa.float32(), 2))], names=["inputs"]))
