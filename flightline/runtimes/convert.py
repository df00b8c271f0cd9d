"""Converts uploads to ONNX so they run in the native onnx runtime.

A conversion is only accepted after the ONNX model and the original agree on a synthetic batch;
otherwise the result carries a note saying why, and the upload runs in its framework's fallback
runtime. This is the sklearn plug-in's converter (`plugins.PLUGINS`). Unpickling runs arbitrary code
and converters can crash, so only the preparation subprocess calls it (`flightline.runtimes.prepare`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pyarrow as pa
from onnx import helper

from flightline.runtimes import sklearn as pickles
from flightline.runtimes import xgboost_booster as boosters
from flightline.runtimes.catalog import get_framework
from flightline.runtimes.conversion import (
    CONVERTED_FILE,
    ConversionResult,
    InvalidConversionRequest,
    difference,
    first_line,
    rename_tensor,
    target_opset,
)

ML_OPSET = 3  # ai.onnx.ml opset that goes with opset 17
_THIS_CONVERTER = f"{__name__}:convert"  # as plug-ins name it
_CORE_INPUT = "inputs_core"


class _NotConverted(Exception):
    """One conversion attempt failed; the message becomes the note (with the fallback appended)."""


def convert(
    framework: str,
    artifact: Path,
    out_dir: Path,
    *,
    input_schema: pa.Schema | None = None,
    output_schema: pa.Schema | None = None,
    options: Mapping[str, str] | None = None,
) -> ConversionResult:
    """Converts `artifact` to `out_dir/model.onnx` when its framework converts and the result is verified.

    Raises UnknownFramework, InvalidConversionRequest (bad schema or options) and ModelLoadError
    (the artifact cannot be loaded at all)."""
    spec = get_framework(framework)
    if not spec.converts_to_onnx or spec.plugin is None or spec.plugin.converter != _THIS_CONVERTER:
        return ConversionResult(None, "")  # served as uploaded, or converted by another plug-in's converter
    opset = target_opset(options or {})
    booster = boosters.is_booster_file(artifact)  # a booster file, not a pickle
    fallback = boosters.RUNTIME if booster else spec.fallback_runtime or ""
    estimator = boosters.load_booster(artifact) if booster else pickles.load_estimator(artifact, options)
    converter = _converter_versions(estimator)
    try:
        layout = pickles.input_layout(estimator, input_schema)
        outputs = pickles.output_methods(framework, estimator, output_schema)
    except pickles.SchemaMismatch as exc:
        raise InvalidConversionRequest(str(exc)) from exc
    try:
        model = _convert_pickle(estimator, layout, outputs, output_schema, opset)
    except _NotConverted as exc:
        note = f"{exc}: runs the original in the {fallback} container runtime"
        return ConversionResult(None, note, fallback=fallback if booster else "", converter=converter)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / CONVERTED_FILE
    onnx.save_model(model, onnx_path)
    return ConversionResult(onnx_path, "", fallback="", converter=converter)


def _converter_versions(estimator: Any) -> str:
    """The converters (and the library of the model) with their versions, as recorded on the version.
    Read from the modules, not the distributions: `xgboost` may be installed as `xgboost-cpu`."""
    import importlib

    modules = ["skl2onnx", "onnx"]
    if type(_final_estimator(estimator)).__module__.startswith(boosters.MODULE):
        modules.insert(1, "onnxmltools")
        modules.append("xgboost")
    else:
        modules.append("sklearn")
    names = {"sklearn": "scikit-learn"}
    return ", ".join(
        f"{names.get(module, module)} {importlib.import_module(module).__version__}" for module in modules
    )


def _convert_pickle(
    estimator: Any,
    layout: pickles.InputLayout,
    outputs: Sequence[tuple[str, str]],
    output_schema: pa.Schema | None,
    opset: int,
) -> onnx.ModelProto:
    """Converts with the input's own precision where the converters allow it, else in float32 behind
    a Cast (XGBoost's ONNX trees are float32 only, as is XGBoost itself)."""
    core_types: list[np.dtype[Any]] = [np.dtype(np.float32)]
    if layout.value_type != pa.float32():
        core_types.insert(0, np.dtype(np.float64))
    first_failure: _NotConverted | None = None
    for core in core_types:
        try:
            model = _skl2onnx(estimator, layout, core, opset)
            model = _with_schema_names(model, layout, core, outputs, output_schema)
            _verify(estimator, layout, outputs, model)
            return model
        except _NotConverted as exc:
            first_failure = first_failure or exc
            if isinstance(exc.__cause__, _missing_converter_errors()):
                break
    assert first_failure is not None
    raise first_failure


def _missing_converter_errors() -> tuple[type[Exception], ...]:
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

    return MissingConverter, MissingShapeCalculator


def _skl2onnx(
    estimator: Any, layout: pickles.InputLayout, core: np.dtype[Any], opset: int
) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    _register_xgboost()
    tensor_type = FloatTensorType if core == np.float32 else DoubleTensorType
    input_name = "inputs" if core == layout.numpy_dtype and not layout.columns else _CORE_INPUT
    converted = boosters.without_feature_names(estimator)
    final = _final_estimator(converted)
    # ZipMap would turn probabilities into a sequence of maps; plain tensors map to Arrow columns.
    options = {id(final): {"zipmap": False}} if _is_classifier(final) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model: onnx.ModelProto = convert_sklearn(
                converted,
                initial_types=[(input_name, tensor_type([None, layout.width]))],
                target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
                options=options,
            )
    except _missing_converter_errors() as exc:
        raise _NotConverted(f"skl2onnx has no converter for {_unsupported_class(exc, estimator)}") from exc
    except Exception as exc:  # converters fail in many ways; each is a reason not to convert
        raise _NotConverted(
            f"skl2onnx could not convert {_class_name(estimator)}: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    return model


def _register_xgboost() -> None:
    """XGBoost's sklearn wrappers convert through onnxmltools' converter, also inside Pipelines."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )


def _final_estimator(estimator: Any) -> Any:
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return estimator


def _is_classifier(estimator: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(estimator))


def _with_schema_names(
    model: onnx.ModelProto,
    layout: pickles.InputLayout,
    core: np.dtype[Any],
    outputs: Sequence[tuple[str, str]],
    output_schema: pa.Schema | None,
) -> onnx.ModelProto:
    """Renames the graph's input and outputs to the served columns, drops outputs the original has no
    method for (e.g. decision scores), flattens single-column results and casts to declared types."""
    graph = model.graph
    if layout.columns:
        _stack_columns(graph, layout, core)
    elif core != layout.numpy_dtype:
        served = helper.make_tensor_value_info("inputs", _onnx_type(layout.numpy_dtype), [None, layout.width])
        cast = helper.make_node("Cast", ["inputs"], [_CORE_INPUT], to=_onnx_type(core), name="cast_inputs")
        graph.node.insert(0, cast)
        kept_inputs = [value for value in graph.input if value.name != _CORE_INPUT]
        del graph.input[:]
        graph.input.extend([served, *kept_inputs])
    # skl2onnx may import the default domain twice; keep one import per domain, at its highest version.
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        versions[entry.domain] = max(entry.version, versions.get(entry.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    produced = list(graph.output)
    if len(produced) < len(outputs):
        raise _NotConverted(f"the ONNX graph has {len(produced)} outputs where {len(outputs)} were expected")
    del graph.output[:]
    # Free the served names first: converters may already use them for other tensors.
    for index, value in enumerate(produced):
        rename_tensor(graph, value.name, f"{value.name}__out{index}")
        value.name = f"{value.name}__out{index}"
    for _, column in outputs:
        rename_tensor(graph, column, f"{column}__inner")
    for value, (_, column) in zip(produced, outputs, strict=False):
        declared = output_schema.field(column).type if output_schema is not None else None
        graph.output.append(_renamed_output(graph, value, column, declared))
    return model


def _stack_columns(graph: onnx.GraphProto, layout: pickles.InputLayout, core: np.dtype[Any]) -> None:
    """A front for one input per column (a DataFrame sent as it is): each 1-D column becomes a (rows, 1)
    tensor of the core type and the columns are concatenated in feature order, inside onnxruntime."""
    column_shape = helper.make_tensor("column_shape", onnx.TensorProto.INT64, [2], [-1, 1])
    graph.initializer.append(column_shape)
    front, served, stacked = [], [], []
    for index, field in enumerate(layout.columns):
        dtype = np.dtype(field.type.to_pandas_dtype())
        served.append(helper.make_tensor_value_info(field.name, _onnx_type(dtype), [None]))
        tall = f"column_{index}__2d"
        front.append(helper.make_node("Reshape", [field.name, "column_shape"], [tall]))
        if dtype != core:
            front.append(helper.make_node("Cast", [tall], [f"{tall}__cast"], to=_onnx_type(core)))
            tall = f"{tall}__cast"
        stacked.append(tall)
    front.append(helper.make_node("Concat", stacked, [_CORE_INPUT], axis=1, name="stack_columns"))
    for node in reversed(front):
        graph.node.insert(0, node)
    kept_inputs = [value for value in graph.input if value.name != _CORE_INPUT]
    del graph.input[:]
    graph.input.extend([*served, *kept_inputs])


def _renamed_output(
    graph: onnx.GraphProto, value: onnx.ValueInfoProto, column: str, declared: pa.DataType | None
) -> onnx.ValueInfoProto:
    tensor = value.type.tensor_type
    dims: list[int | str | None] = [
        d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
    ]
    elem_type = tensor.elem_type
    current = value.name
    declared_list = declared is not None and (
        pa.types.is_fixed_size_list(declared) or pa.types.is_list(declared)
    )
    if len(dims) == 2 and dims[1] == 1 and not declared_list:
        shape = helper.make_tensor(f"{column}_shape", onnx.TensorProto.INT64, [1], [-1])
        graph.initializer.append(shape)
        graph.node.append(helper.make_node("Reshape", [current, shape.name], [f"{column}_flat"]))
        current, dims = f"{column}_flat", [None]
    value_type = declared.value_type if declared is not None and declared_list else declared
    if value_type is not None and _is_numeric(value_type):
        wanted = _onnx_type(np.dtype(value_type.to_pandas_dtype()))
        if wanted != elem_type:
            graph.node.append(helper.make_node("Cast", [current], [f"{column}_cast"], to=wanted))
            current, elem_type = f"{column}_cast", wanted
    graph.node.append(helper.make_node("Identity", [current], [column]))
    return helper.make_tensor_value_info(column, elem_type, [None, *dims[1:]])


def _verify(
    estimator: Any, layout: pickles.InputLayout, outputs: Sequence[tuple[str, str]], model: onnx.ModelProto
) -> None:
    """Runs the ONNX model and the original on the same synthetic batch and compares every output."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime rejects graphs the converter got wrong
        raise _NotConverted(
            f"onnxruntime cannot load the converted {_class_name(estimator)}: {first_line(exc)}"
        ) from exc
    columns = [column for _, column in outputs]

    def original(batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = pickles.model_inputs(estimator, batch)
            return [np.asarray(getattr(estimator, method)(inputs)) for method, _ in outputs]

    try:
        batch, expected = pickles.run_on_synthetic(layout, original)
        feeds = pickles.column_feeds(layout, batch) if layout.columns else {"inputs": batch}
        got: list[npt.NDArray[Any]] = session.run(columns, feeds)
    except Exception as exc:  # either side failing means the conversion cannot be trusted
        raise _NotConverted(
            f"could not check the conversion on a synthetic batch: {first_line(exc)}"
        ) from exc
    for column, want, have in zip(columns, expected, got, strict=True):
        problem = difference(want, np.asarray(have))
        if problem:
            raise _NotConverted(
                f"the ONNX conversion of {_class_name(estimator)} disagrees with the original on a "
                f"synthetic batch: {column} {problem}"
            )


def _onnx_type(dtype: np.dtype[Any]) -> int:
    return int(helper.np_dtype_to_tensor_dtype(dtype))


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))


def _class_name(estimator: Any) -> str:
    return f"{type(estimator).__module__}.{type(estimator).__qualname__}"


def _unsupported_class(exc: Exception, estimator: Any) -> str:
    named = re.search(r"<class '([\w.]+)'>", str(exc))
    return named.group(1) if named else _class_name(estimator)
