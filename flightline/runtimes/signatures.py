"""MLflow model signatures as Arrow schemas, from their JSON form (the strings an MLmodel file holds
under `signature: inputs:` / `outputs:`, and what `ModelSignature.to_dict()` returns), so no mlflow
import is needed to read one.

- A column signature becomes one field per named column (clients send a DataFrame as it is): MLflow's
  `double` is float64, `float` float32, `long` int64, `integer` int32, `boolean` bool, `string`, `binary`,
  `datetime` a timestamp; an `array` of such a type a variable-size list of it.
- A tensor signature becomes a (nested) fixed-size list of the tensor's per-row shape (the shape after
  the leading -1 of the batch), a plain column for shape (-1,). One unnamed tensor is the guide's single
  `inputs` column (`predictions` for an output); named tensors give a field each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.rules import tensor_type

UNNAMED_INPUT = "inputs"
UNNAMED_OUTPUT = "predictions"

_COLUMN_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "binary": pa.binary(),
    "datetime": pa.timestamp("ns"),
}

Form = Literal["columns", "tensor", "tensors"]


@dataclass(frozen=True)
class Signature:
    """One side (inputs or outputs) of a signature: its Arrow schema and the form predict takes it in:
    a DataFrame of the columns, one ndarray (a single tensor) or a dict of ndarrays (named tensors)."""

    schema: pa.Schema
    form: Form


def parse(specs: str | list[Any] | None, side: str) -> Signature | None:
    """The signature side `side` ("inputs" or "outputs") as Arrow; None when the model has none.
    ModelLoadError naming a column whose type Arrow tensors cannot carry (object, map, any)."""
    if specs is None or specs == "":
        return None
    try:
        items = json.loads(specs) if isinstance(specs, str) else specs
    except ValueError:
        raise ModelLoadError(f"the model's signature {side} are not JSON") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ModelLoadError(f"the model's signature {side} are not a list of column or tensor specs")
    tensors = [i for i in items if i.get("type") == "tensor"]
    if tensors and len(tensors) != len(items):
        raise ModelLoadError(f"the model's signature {side} mix tensors and columns")
    if not tensors:
        return Signature(pa.schema([_column(i, n, side) for n, i in enumerate(items)]), "columns")
    unnamed = UNNAMED_INPUT if side == "inputs" else UNNAMED_OUTPUT
    if len(items) == 1 and not items[0].get("name"):
        return Signature(pa.schema([_tensor(items[0], unnamed, side)]), "tensor")
    if not all(i.get("name") for i in items):
        raise ModelLoadError(f"the model's signature {side} have several tensors, not all of them named")
    return Signature(pa.schema([_tensor(i, str(i["name"]), side) for i in items]), "tensors")


def params(specs: str | list[Any] | None) -> pa.Schema | None:
    """The signature's params (e.g. a threshold) as one field each (a `shape` makes a list); None when
    it declares none. ModelLoadError naming a param of a type without an Arrow column here."""
    if specs is None or specs == "":
        return None
    try:
        items = json.loads(specs) if isinstance(specs, str) else specs
    except ValueError:
        raise ModelLoadError("the model's signature params are not JSON") from None
    fields = []
    for item in items if isinstance(items, list) else []:
        leaf = _COLUMN_TYPES.get(str(item.get("type"))) if isinstance(item, dict) else None
        if leaf is None or not item.get("name"):
            raise ModelLoadError(
                f"the model's signature declares a param of no known type: {str(item)[:200]}"
            )
        fields.append(pa.field(str(item["name"]), pa.list_(leaf) if item.get("shape") else leaf))
    return pa.schema(fields) if fields else None


def _column(item: dict[str, Any], index: int, side: str) -> pa.Field:
    name = str(item.get("name") or index)
    kind = item.get("type")
    nullable = not item.get("required", True)
    if kind == "array":
        items = item.get("items") or {}
        leaf = _COLUMN_TYPES.get(str(items.get("type")))
        if leaf is None:
            raise ModelLoadError(
                f"signature {side} column '{name}' is an array of {items.get('type')}; "
                f"supported element types: {sorted(_COLUMN_TYPES)}"
            )
        return pa.field(name, pa.list_(leaf), nullable=nullable)
    found = _COLUMN_TYPES.get(str(kind))
    if found is None:
        raise ModelLoadError(
            f"signature {side} column '{name}' has type {kind}, which has no Arrow column here; "
            f"supported: {sorted(_COLUMN_TYPES)} and arrays of them"
        )
    return pa.field(name, found, nullable=nullable)


def _tensor(item: dict[str, Any], name: str, side: str) -> pa.Field:
    spec = item.get("tensor-spec") or {}
    try:
        leaf = pa.from_numpy_dtype(np.dtype(str(spec.get("dtype"))))
    except (TypeError, pa.ArrowNotImplementedError):
        raise ModelLoadError(f"signature {side} tensor '{name}' has dtype {spec.get('dtype')}") from None
    shape = spec.get("shape") or [-1]
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise ModelLoadError(f"signature {side} tensor '{name}' has no integer shape")
    if shape[0] != -1:
        raise ModelLoadError(f"signature {side} tensor '{name}' has shape {shape}, not starting with -1")
    if any(d < 0 for d in shape[1:]):
        raise ModelLoadError(
            f"signature {side} tensor '{name}' has a variable dimension after the rows ({shape}); "
            "tensors here have a fixed per-row shape"
        )
    return pa.field(name, tensor_type(leaf, tuple(shape[1:])), nullable=False)


def check_declared(what: str, declared: pa.Schema | None, signature: Signature | None) -> pa.Schema | None:
    """The schema to serve: the signature's, the declared one where there is no signature. A declared
    schema that differs from the signature is a ModelLoadError naming the first difference."""
    if signature is None:
        return declared
    if declared is None or declared.equals(signature.schema):
        return signature.schema
    if declared.names != signature.schema.names:
        raise ModelLoadError(
            f"the declared {what} schema has columns {declared.names}; the model's signature says "
            f"{signature.schema.names}"
        )
    for field in declared:
        expected = signature.schema.field(field.name)
        if not field.type.equals(expected.type):
            raise ModelLoadError(
                f"the declared {what} schema's column '{field.name}' is {field.type}; the model's "
                f"signature says {expected.type}"
            )
    return signature.schema
