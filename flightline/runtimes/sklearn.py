"""Runs an original sklearn or XGBoost pickle: the fallback for models that could not be converted to
ONNX. Inputs are one `inputs` fixed-size list column (the features in training order); outputs are
`predictions` (`output` for XGBoost) from `predict`, plus `probabilities` when the model has
`predict_proba`. The helpers here are shared with `convert.py`, so both serving paths agree on the
input layout and output names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import joblib
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime
from flightline.runtimes.rules import as_tensor, from_tensor, tensor_shape, tensor_type

INPUT_COLUMN = "inputs"
_FEATURE_TYPES = (pa.float32(), pa.float64(), pa.int32(), pa.int64())
_DEFAULT_NAMES = {"xgboost": ("output", "probabilities")}
_SKLEARN_NAMES = ("predictions", "probabilities")


class SchemaMismatch(ValueError):
    """A given schema does not fit the model (wrong column, width or type)."""


@dataclass(frozen=True)
class InputLayout:
    """The one `inputs` column: its width (the feature count) and value type."""

    width: int
    value_type: pa.DataType

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(INPUT_COLUMN, pa.list_(self.value_type, self.width))])

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.value_type.to_pandas_dtype())
        return dtype


def load_estimator(artifact: Path) -> Any:
    """Loads a pickle (plain or joblib) holding a fitted estimator with `predict`."""
    if not artifact.is_file():
        raise ModelLoadError(f"model file {artifact} does not exist")
    try:
        estimator = joblib.load(artifact)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"the pickle needs the Python module {exc.name!r}, which is not installed: "
            "list it in the upload's requirements"
        ) from exc
    except Exception as exc:  # unpickling raises anything: EOFError, UnpicklingError, AttributeError...
        raise ModelLoadError(f"not a loadable pickle: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(
            f"the pickle holds a {type(estimator).__module__}.{type(estimator).__qualname__}, "
            "not a fitted estimator with predict()"
        )
    return estimator


def input_layout(estimator: Any, schema: pa.Schema | None) -> InputLayout:
    """The input column from the schema when given (checked against the model), else from the model."""
    trained_width: int | None = getattr(estimator, "n_features_in_", None)
    if schema is None:
        if trained_width is None:
            raise SchemaMismatch(
                "the model does not record its feature count (no n_features_in_): give an input schema "
                f"with one {INPUT_COLUMN!r} fixed-size list column"
            )
        return InputLayout(int(trained_width), pa.float32())
    if schema.names != [INPUT_COLUMN]:
        raise SchemaMismatch(
            f"the input schema must have exactly one column {INPUT_COLUMN!r} (a fixed-size list of the "
            f"features in training order), got {schema.names}"
        )
    column = schema.field(INPUT_COLUMN).type
    if not (pa.types.is_fixed_size_list(column) or pa.types.is_list(column)):
        raise SchemaMismatch(f"input column {INPUT_COLUMN!r} must be a fixed-size list, got {column}")
    if column.value_type not in _FEATURE_TYPES:
        raise SchemaMismatch(
            f"input column {INPUT_COLUMN!r} holds {column.value_type}; "
            f"supported: {', '.join(map(str, _FEATURE_TYPES))}"
        )
    width = column.list_size if pa.types.is_fixed_size_list(column) else trained_width
    if width is None:
        raise SchemaMismatch(
            f"the model does not record its feature count: make {INPUT_COLUMN!r} a fixed-size list"
        )
    if trained_width is not None and width != trained_width:
        raise SchemaMismatch(
            f"input schema has {width} features but the model was trained on {trained_width}"
        )
    return InputLayout(int(width), column.value_type)


def output_methods(framework: str, estimator: Any, schema: pa.Schema | None) -> list[tuple[str, str]]:
    """(estimator method, output column) pairs: predict, then predict_proba when the model has it.
    Column names come from the output schema when given, in order, else the framework's defaults."""
    methods = ["predict"] + (["predict_proba"] if callable(getattr(estimator, "predict_proba", None)) else [])
    if schema is None:
        return list(zip(methods, _DEFAULT_NAMES.get(framework, _SKLEARN_NAMES), strict=False))
    if len(schema) > len(methods):
        raise SchemaMismatch(
            f"output schema has {len(schema)} columns {schema.names} but the model only gives "
            f"{' and '.join(methods)}"
        )
    return list(zip(methods, schema.names, strict=False))


def model_inputs(estimator: Any, features: npt.NDArray[Any]) -> Any:
    """Models fitted on a DataFrame want their column names back; wrapping the array does not copy it."""
    names = getattr(estimator, "feature_names_in_", None)
    return features if names is None else pd.DataFrame(features, columns=names, copy=False)


def synthetic_batches(layout: InputLayout) -> list[npt.NDArray[Any]]:
    """Small batches across magnitudes and integer values; the second is non-negative for models
    (e.g. multinomial naive Bayes) that refuse negative features."""
    rng = np.random.default_rng(7)
    unit = rng.standard_normal((16, layout.width))
    values = np.concatenate([unit, unit * 10, unit * 1000, rng.integers(0, 5, (16, layout.width))])
    values = np.round(values, 3)
    return [values.astype(layout.numpy_dtype), np.abs(values).astype(layout.numpy_dtype)]


def run_on_synthetic(
    layout: InputLayout, call: Callable[[npt.NDArray[Any]], list[npt.NDArray[Any]]]
) -> tuple[npt.NDArray[Any], list[npt.NDArray[Any]]]:
    """Runs `call` on the first synthetic batch it accepts; returns that batch and the results."""
    errors: list[str] = []
    for batch in synthetic_batches(layout):
        try:
            return batch, call(batch)
        except Exception as exc:  # any model error: try the next batch, report all if none works
            errors.append(f"{type(exc).__name__}: {exc}")
    raise ModelLoadError(f"the model fails on synthetic {layout.width}-feature input: {'; '.join(errors)}")


def arrow_type_of(result: npt.NDArray[Any]) -> pa.DataType:
    """The column type of a model result: scalars for 1-D, nested fixed-size lists per extra dimension."""
    leaf = pa.string() if result.dtype.kind in "OUS" else pa.from_numpy_dtype(result.dtype)
    return tensor_type(leaf, result.shape[1:])


def to_arrow(result: npt.NDArray[Any], arrow_type: pa.DataType) -> pa.Array:
    """A model's numpy result as an Arrow column of `arrow_type`; ValueError when it cannot be one."""
    leaf, shape = tensor_shape(arrow_type)
    if result.shape[1:] != shape:
        raise ValueError(f"the model returned shape {result.shape}, the column holds {list(shape)} per row")
    if pa.types.is_string(leaf):
        return from_tensor(result.astype(str))
    return from_tensor(result.astype(leaf.to_pandas_dtype(), copy=False))


class SklearnRuntime(Runtime):
    name = "sklearn"

    def __init__(
        self, estimator: Any, layout: InputLayout, methods: list[tuple[str, str]], output_schema: pa.Schema
    ) -> None:
        self._estimator = estimator
        self._methods = [getattr(estimator, method) for method, _ in methods]
        self.input_schema = layout.schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        estimator = load_estimator(spec.artifact)
        try:
            layout = input_layout(estimator, spec.input_schema)
            methods = output_methods(spec.framework, estimator, spec.output_schema)
        except SchemaMismatch as exc:
            raise ModelLoadError(str(exc)) from exc
        # A probe run learns the output types and proves the declared ones fit.
        _, results = run_on_synthetic(
            layout, lambda x: [getattr(estimator, m)(model_inputs(estimator, x)) for m, _ in methods]
        )
        fields = []
        for (_, column), result in zip(methods, results, strict=True):
            declared = spec.output_schema.field(column) if spec.output_schema is not None else None
            field = declared if declared is not None else pa.field(column, arrow_type_of(np.asarray(result)))
            try:
                to_arrow(np.asarray(result), field.type)
            except (ValueError, TypeError, pa.ArrowException) as exc:
                raise ModelLoadError(
                    f"output column {column!r} is declared {field.type} but the model returns "
                    f"{np.asarray(result).dtype} values of shape {np.shape(result)}: {exc}"
                ) from exc
            fields.append(field)
        return cls(estimator, layout, methods, pa.schema(fields))

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        inputs = model_inputs(self._estimator, as_tensor(batch.column(INPUT_COLUMN)))
        arrays = [
            to_arrow(np.asarray(method(inputs)), field.type)
            for method, field in zip(self._methods, self.output_schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)
