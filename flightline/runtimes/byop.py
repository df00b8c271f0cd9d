"""Arbitrary Python (BYOP, the guide's `custom` framework): a .zip of Python scripts, artifacts and a
`requirements.txt`, whose scripts extend `mac.inference.Inference` and
`mac.inference.creation.InferenceBuilder` (any names, any file names at the archive's top).

`mac` is this package's compatibility copy (`byop_compat/mac`), put first on `sys.path` of the process
that loads the model, so code written for the guide's API runs unchanged. Loading, at upload
(`describe`, in the model's environment, sandboxed) as in the runtime server: import every top-level
script, find exactly one concrete InferenceBuilder and one concrete Inference, `create` the inference
with `CustomInferenceConfig(model_path=<unpacked folder>)`, and check that it holds a model of one of
its `expected_model_types`. Each failure is a ModelLoadError naming what is missing.

`_predict` receives a dict of numpy arrays, one per input column: (rows, *shape) arrays for scalar and
fixed-size-list columns (zero-copy views), an object array of per-row arrays for variable-size lists
(ragged rows are allowed here, as the guide says) and an object array for strings. It returns a dict of
arrays with one entry per output column.

Scripts are loaded as modules of their own; the archive's folder is also put on `sys.path` so scripts
can import their siblings, which therefore share one module name per runtime process."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.types as pt

from flightline.runtimes.archives import read_member, unpacked
from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime
from flightline.runtimes.rules import as_tensor, from_tensor, tensor_shape
from flightline.runtimes.scripts import load_module

COMPAT_PATH = Path(__file__).parent / "byop_compat"
INFERENCE = "mac.inference.Inference"
BUILDER = "mac.inference.creation.InferenceBuilder"
_TEXT_LIMIT = 256 << 10
_MAX_REQUIREMENTS = 500


def own_requirements(archive: Path) -> tuple[tuple[str, ...], str]:
    """The lines of the archive's requirements.txt (control plane: text only); no Python version (the
    guide's BYOP runs on the platform's)."""
    text = read_member(archive, "requirements.txt", _TEXT_LIMIT) or ""
    lines = tuple(line for raw in text.splitlines() if (line := raw.split("#", 1)[0].strip()))
    if len(lines) > _MAX_REQUIREMENTS:
        raise ModelLoadError(f"requirements.txt lists over {_MAX_REQUIREMENTS} requirements")
    return lines, ""


def _mac() -> tuple[type[Any], type[Any], type[Any]]:
    """(Inference, InferenceBuilder, CustomInferenceConfig) of the top-level `mac` the models import."""
    if str(COMPAT_PATH) not in sys.path:
        sys.path.insert(0, str(COMPAT_PATH))
    import importlib

    inference = importlib.import_module("mac.inference")
    creation = importlib.import_module("mac.inference.creation")
    config = importlib.import_module("mac.config.inference")
    return inference.Inference, creation.InferenceBuilder, config.CustomInferenceConfig


def _defined(modules: list[ModuleType], base: type[Any]) -> list[type[Any]]:
    """Concrete subclasses of `base` defined by the scripts themselves (not imported into them)."""
    found: list[type[Any]] = []
    for module in modules:
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and value.__module__ == module.__name__
                and issubclass(value, base)
                and not inspect.isabstract(value)
            ):
                found.append(value)
    return found


def _one(found: list[type[Any]], what: str, scripts: list[Path], modules: list[ModuleType]) -> type[Any]:
    files = {module.__name__: path.name for module, path in zip(modules, scripts, strict=True)}
    if not found:
        raise ModelLoadError(
            f"no script defines a class extending {what} (scripts: {', '.join(p.name for p in scripts)})"
        )
    if len(found) > 1:
        names = ", ".join(f"{cls.__name__} ({files.get(cls.__module__, '?')})" for cls in found)
        raise ModelLoadError(f"found {len(found)} classes extending {what}: {names}; exactly one is needed")
    return found[0]


def load_inference(root: Path) -> Any:
    """The created Inference of the BYOP folder `root`, checked; ModelLoadError saying what is wrong."""
    inference_base, builder_base, config_class = _mac()
    scripts = sorted(p for p in root.glob("*.py") if p.is_file())
    if not scripts:
        raise ModelLoadError("the archive has no Python script (.py) at its top")
    if str(root) not in sys.path:
        sys.path.insert(1, str(root))  # after mac: a script named mac.py must not hide the API
    modules = [load_module(path, "flightline_byop") for path in scripts]
    builder_class = _one(_defined(modules, builder_base), BUILDER, scripts, modules)
    inference_class = _one(_defined(modules, inference_base), INFERENCE, scripts, modules)
    try:
        inference = builder_class().create(config_class(model_path=root))
    except TypeError as error:  # the model setter's check, or a builder with the wrong signature
        raise ModelLoadError(f"{builder_class.__name__}.create(config) failed: {error}") from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"{builder_class.__name__}.create(config) failed: {type(error).__name__}: {first}"
        ) from None
    if not isinstance(inference, inference_base):
        raise ModelLoadError(
            f"{builder_class.__name__}.create(config) returned {type(inference).__name__}, not an "
            f"{INFERENCE} ({inference_class.__name__})"
        )
    if inference.model is None:
        raise ModelLoadError(f"{builder_class.__name__}.create(config) assigned no model to the inference")
    try:
        expected = inference.expected_model_types
        inference.raise_error_if_model_is_wrong_type(inference.model)
    except TypeError as error:
        raise ModelLoadError(f"expected_model_types: {error}") from None
    except Exception as error:
        raise ModelLoadError(
            f"{type(inference).__name__}.expected_model_types failed: {type(error).__name__}"
        ) from None
    if not expected:
        raise ModelLoadError(f"{type(inference).__name__}.expected_model_types is empty")
    return inference


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema | None, pa.Schema | None]:
    """Loads the model as its runtime will and returns the declared schemas: `_predict`'s dict is
    derived from the input schema, so a BYOP upload must declare one (as the guide's upload does)."""
    if input_schema is None or len(input_schema) == 0:
        raise ModelLoadError(
            "a custom (BYOP) model needs conversion.input_schema: _predict receives one numpy array per "
            "column of it"
        )
    with unpacked(path) as root:
        load_inference(root)
    return input_schema, output_schema


class ByopRuntime(Runtime):
    name = "byop"

    def __init__(self, inference: Any, input_schema: pa.Schema, output_schema: pa.Schema) -> None:
        self._inference = inference
        self.input_schema = input_schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        if not spec.artifact.is_dir():
            raise ModelLoadError("a custom (BYOP) model is served from its unpacked archive folder")
        inference = load_inference(spec.artifact)
        return cls(inference, spec.input_schema or pa.schema([]), spec.output_schema or pa.schema([]))

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        names = batch.schema.names
        data = {name: to_array(column) for name, column in zip(names, batch.columns, strict=True)}
        result = self._inference.predict(data)
        if not isinstance(result, dict):
            raise ValueError(
                f"_predict returned {type(result).__name__}; expected a dict of numpy arrays "
                "(mac.types.InferenceData)"
            )
        return from_arrays(result, self.output_schema)


def to_array(column: pa.Array) -> np.ndarray:
    """One input column as the numpy array `_predict` receives (see the module's docstring)."""
    if pt.is_list(column.type) or pt.is_large_list(column.type):
        offsets = column.offsets.to_numpy()
        values = to_array(column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
        rows = np.empty(len(column), dtype=object)
        rows[:] = np.split(values, (offsets[1:-1] - offsets[0]).tolist()) if len(column) else []
        return rows
    leaf, _ = tensor_shape(column.type)
    if pt.is_integer(leaf) or pt.is_floating(leaf) or pt.is_boolean(leaf):
        return as_tensor(column)
    array: np.ndarray = column.to_numpy(zero_copy_only=False)
    return array


def from_arrays(result: dict[str, Any], declared: pa.Schema) -> pa.RecordBatch:
    """`_predict`'s dict as a record batch of the declared output schema (empty: as it comes)."""
    names = declared.names or [str(key) for key in result]
    missing = [name for name in names if name not in result]
    if missing:
        raise ValueError(
            f"_predict returned no '{missing[0]}' of the output schema; it returned {list(result)}"
        )
    columns = []
    for name in names:
        target = declared.field(name).type if declared.names else None
        columns.append(_column(result[name], target))
    return pa.RecordBatch.from_arrays(columns, names=names)


def _column(value: Any, target: pa.DataType | None) -> pa.Array:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind in "iufb" and array.ndim >= 1:
        column = from_tensor(array)
        if target is None or column.type.equals(target):
            return column
        if pt.is_list(target) or pt.is_large_list(target):  # regular rows into a variable-size list type
            return pa.array(array.tolist(), type=target)
        return column.cast(target)
    items = list(array) if array.dtype == object else array.tolist()
    rows = [item.tolist() if isinstance(item, np.ndarray) else item for item in items]
    return pa.array(rows, type=target)
