"""Runs an original sklearn or XGBoost model: the fallback for models that could not be converted to
ONNX. A model is a pickle (plain, joblib or cloudpickle) or a skops file (`.skops`, loaded with an
explicit list of trusted types, never `trusted=True`). Inputs are either one `inputs` fixed-size list
column (the features in training order, the seed's form) or one scalar column per feature (a DataFrame
sent as it is, e.g. an MLflow column signature); outputs are `predictions` (`output` for XGBoost) from
`predict`, plus `probabilities` when the model has `predict_proba`. The helpers here are shared with
`convert.py`, so both serving paths agree on the input layout and output names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
SKOPS_SUFFIX = ".skops"
# Types a skops file may hold beyond skops' own defaults (which cover scikit-learn's estimators and
# numpy/scipy containers): the ones fitted scikit-learn models need. Anything else must be named by the
# upload's option `skops_trusted_types` (comma-separated), the uploader's explicit decision.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "collections.OrderedDict",
)
_DEFAULT_NAMES = {"xgboost": ("output", "probabilities")}
_SKLEARN_NAMES = ("predictions", "probabilities")


class SchemaMismatch(ValueError):
    """A given schema does not fit the model (wrong column, width or type)."""


@dataclass(frozen=True)
class InputLayout:
    """The features: one `inputs` column of `width` values of `value_type`, or, when `columns` is set,
    one scalar column per feature (their common `value_type` is what the model computes in)."""

    width: int
    value_type: pa.DataType
    columns: tuple[pa.Field, ...] = ()

    @property
    def schema(self) -> pa.Schema:
        if self.columns:
            return pa.schema(self.columns)
        return pa.schema([pa.field(INPUT_COLUMN, pa.list_(self.value_type, self.width))])

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.value_type.to_pandas_dtype())
        return dtype

    def features(self, batch: pa.RecordBatch) -> npt.NDArray[Any]:
        """The (rows, width) features of a checked batch: a zero-copy view of the `inputs` column, or the
        columns stacked in one vectorized copy (a 2-D array needs one buffer)."""
        if not self.columns:
            return as_tensor(batch.column(INPUT_COLUMN))
        out = np.empty((batch.num_rows, self.width), dtype=self.numpy_dtype)
        for index, field in enumerate(self.columns):
            out[:, index] = as_tensor(batch.column(field.name))
        return out


def load_estimator(artifact: Path, options: Mapping[str, str] | None = None) -> Any:
    """Loads a pickle (plain, joblib or cloudpickle) or a skops file holding a fitted estimator with
    `predict`. `options["skops_trusted_types"]` adds types a skops file may hold (comma-separated)."""
    if not artifact.is_file():
        raise ModelLoadError(f"model file {artifact} does not exist")
    try:
        if artifact.suffix == SKOPS_SUFFIX:
            estimator = _load_skops(artifact, (options or {}).get("skops_trusted_types", ""))
        else:
            estimator = joblib.load(artifact)
    except ModelLoadError:
        raise
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


def _load_skops(artifact: Path, extra: str) -> Any:
    """skops refuses types it does not trust by default; we trust exactly SKOPS_TRUSTED_TYPES plus what
    the uploader named, and name whatever else the file holds."""
    import skops.io

    allowed = set(SKOPS_TRUSTED_TYPES) | {name.strip() for name in extra.split(",") if name.strip()}
    untrusted = skops.io.get_untrusted_types(file=artifact)
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise ModelLoadError(
            f"the skops file holds types Flightline does not trust: {', '.join(refused[:10])}; if you trust "
            "them, upload again with the option skops_trusted_types set to them (comma-separated)"
        )
    return skops.io.load(artifact, trusted=sorted(set(untrusted)))


def input_layout(estimator: Any, schema: pa.Schema | None) -> InputLayout:
    """The input columns from the schema when given (checked against the model), else from the model:
    one `inputs` list column, or one scalar column per feature (named like the model's features when it
    was fitted on a DataFrame)."""
    trained_width: int | None = getattr(estimator, "n_features_in_", None)
    if schema is not None and schema.names != [INPUT_COLUMN]:
        return _column_layout(estimator, schema, trained_width)
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


def _column_layout(estimator: Any, schema: pa.Schema, trained_width: int | None) -> InputLayout:
    for field in schema:
        if field.type not in _FEATURE_TYPES and not pa.types.is_boolean(field.type):
            raise SchemaMismatch(
                f"input column {field.name!r} is {field.type}; one column per feature takes "
                f"{', '.join(map(str, _FEATURE_TYPES))} or bool (or send one {INPUT_COLUMN!r} list column)"
            )
    if trained_width is not None and len(schema) != trained_width:
        raise SchemaMismatch(
            f"input schema has {len(schema)} columns {schema.names} but the model was trained on "
            f"{trained_width} features"
        )
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and list(names) != schema.names:
        wrong = next((n for n, want in zip(schema.names, names, strict=False) if n != want), schema.names[0])
        raise SchemaMismatch(
            f"input column {wrong!r} is not the model's feature in that place; it was fitted on "
            f"{list(names)[:50]}"
        )
    # The model computes in one type: float64 unless every column is float32.
    float32 = all(field.type == pa.float32() for field in schema)
    value_type = pa.float32() if float32 else pa.float64()
    return InputLayout(len(schema), value_type, tuple(schema))


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
    batches = [values, np.abs(values)]
    for index, field in enumerate(layout.columns):  # values an integer or bool column can hold exactly
        for batch in batches:
            if pa.types.is_boolean(field.type):
                batch[:, index] = batch[:, index] > 0
            elif pa.types.is_integer(field.type):
                batch[:, index] = np.round(batch[:, index])
    return [batch.astype(layout.numpy_dtype) for batch in batches]


def column_feeds(layout: InputLayout, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
    """A (rows, width) feature array as one array per input column, each in its column's type (what a
    converted model with one input per column is fed)."""
    return {
        field.name: features[:, index].astype(field.type.to_pandas_dtype())
        for index, field in enumerate(layout.columns)
    }


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
        self._layout = layout
        self.input_schema = layout.schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        return cls.from_estimator(load_estimator(spec.artifact, spec.options), spec)

    @classmethod
    def from_estimator(cls, estimator: Any, spec: ModelSpec) -> Self:
        """Serves a loaded estimator (for runtimes that load theirs another way, e.g. booster files)."""
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
        inputs = model_inputs(self._estimator, self._layout.features(batch))
        arrays = [
            to_arrow(np.asarray(method(inputs)), field.type)
            for method, field in zip(self._methods, self.output_schema, strict=True)
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)
