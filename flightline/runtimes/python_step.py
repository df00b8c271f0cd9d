"""Python steps: one .py script defining `wallaroo_json(data: pandas.DataFrame)` that returns a DataFrame,
a list of row dicts or an Arrow table. Used for pre/post-processing steps and small models.

The user's contract is pandas, so a batch becomes a DataFrame (fixed-size-list columns become one numpy
array per row) and the result comes back to Arrow. Without a declared input schema the step accepts any
columns; without a declared output schema its output columns are whatever the script returns."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pandas as pd
import pyarrow as pa

from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime, artifact_file
from flightline.runtimes.scripts import load_module

ENTRY_POINT = "wallaroo_json"


def _to_batch(result: Any) -> pa.RecordBatch:
    if isinstance(result, pd.DataFrame):
        return pa.RecordBatch.from_pandas(result, preserve_index=False)
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        return pa.RecordBatch.from_pylist(result)
    if isinstance(result, pa.RecordBatch):
        return result
    if isinstance(result, pa.Table):
        return (
            result.combine_chunks().to_batches()[0]
            if result.num_rows
            else pa.RecordBatch.from_pylist([], schema=result.schema)
        )
    raise TypeError(
        f"{ENTRY_POINT} returned {type(result).__name__}; expected a pandas DataFrame, a list of "
        "row dicts or a pyarrow Table"
    )


class PythonStepRuntime(Runtime):
    name = "python"

    def __init__(
        self, function: Callable[[pd.DataFrame], Any], input_schema: pa.Schema, output_schema: pa.Schema
    ) -> None:
        self._function = function
        self.input_schema = input_schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        path = artifact_file(spec.artifact, ".py", "script")
        function = getattr(load_module(path), ENTRY_POINT, None)
        if not callable(function):
            raise ModelLoadError(
                f"{path.name} does not define a function {ENTRY_POINT}(data: pandas.DataFrame)"
            )
        return cls(function, spec.input_schema or pa.schema([]), spec.output_schema or pa.schema([]))

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        result = _to_batch(self._function(batch.to_pandas()))
        if len(self.output_schema) == 0:
            return result
        missing = [n for n in self.output_schema.names if n not in result.schema.names]
        if missing:
            raise ValueError(
                f"{ENTRY_POINT} returned no column '{missing[0]}' of the declared output schema; "
                f"it returned {result.schema.names}"
            )
        return result.select(self.output_schema.names).cast(self.output_schema)


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema | None, pa.Schema | None]:
    """Checks, without running it, that the script parses and defines a top-level `wallaroo_json`;
    a step's schemas are whatever was declared (its columns are the script's business)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except (SyntaxError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid Python script: {exc}") from exc
    if not any(isinstance(n, ast.FunctionDef) and n.name == ENTRY_POINT for n in tree.body):
        raise ModelLoadError(f"{path.name} defines no top-level `{ENTRY_POINT}(data)` function")
    return input_schema, output_schema
