"""The flavor rules of runtimes/mlflow_model.py on MLmodel texts as MLflow 3 writes them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from flightline.runtimes import mlflow_model
from flightline.runtimes.catalog import FRAMEWORKS
from flightline.runtimes.mlflow_model import NotAnMlflowModel, SignatureMismatch

KNOWN = [f.name for f in FRAMEWORKS]
SKLEARN = """
flavors:
  python_function: {loader_module: mlflow.sklearn, model_path: model.skops}
  sklearn: {pickled_model: model.skops, serialization_format: skops, sklearn_version: 1.9.1}
mlflow_version: 3.17.2
model_id: m-abc
run_id: r1
signature:
  inputs: '[{"type": "double", "name": "a", "required": true},
    {"type": "long", "name": "b", "required": true}]'
  outputs: '[{"type": "long", "required": true}]'
  params: '[{"name": "threshold", "type": "double", "default": 0.5, "shape": null},
    {"name": "labels", "type": "string", "default": ["x"], "shape": [-1]}]'
"""
TENSOR = """
flavors:
  python_function: {loader_module: mlflow.xgboost, data: model.ubj}
  xgboost: {data: model.ubj, model_format: ubj, model_class: xgboost.sklearn.XGBClassifier}
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 3]}}]'
"""


def test_sklearn_flavor_routes_to_sklearn_with_its_file_and_column_schema() -> None:
    model = mlflow_model.parse(SKLEARN)
    route = mlflow_model.route(model, "", KNOWN)
    assert (route.framework, route.flavor, route.artifact, route.serialization) == (
        "sklearn",
        "sklearn",
        "model.skops",
        "skops",
    )
    assert not route.own_environment
    # Required columns (MLflow's default) are not nullable: the signature converter pyfunc uses too.
    assert mlflow_model.input_schema(model) == pa.schema(
        [pa.field("a", pa.float64(), nullable=False), pa.field("b", pa.int64(), nullable=False)]
    )
    assert mlflow_model.output_schema(model) is None  # unnamed: the runtime names its outputs
    assert mlflow_model.params_schema(model) == pa.schema(
        [("threshold", pa.float64()), ("labels", pa.list_(pa.string()))]
    )
    assert mlflow_model.is_column_signature(model)
    asked = mlflow_model.route(model, "mlflow", KNOWN)
    assert (asked.framework, asked.artifact, asked.own_environment) == ("mlflow", "", True)
    with pytest.raises(ValueError, match=r"conversion\.framework 'onnx' does not fit"):
        mlflow_model.route(model, "onnx", KNOWN)


def test_tensor_signature_is_a_nested_fixed_size_list_named_inputs() -> None:
    model = mlflow_model.parse(TENSOR)
    assert mlflow_model.route(model, "", KNOWN).framework == "xgboost"
    schema = mlflow_model.input_schema(model)
    assert schema == pa.schema([pa.field("inputs", pa.list_(pa.list_(pa.float32(), 3), 2), nullable=False)])
    ragged = TENSOR.replace("[-1, 2, 3]", "[-1, -1]")
    with pytest.raises(NotAnMlflowModel, match="variable dimension"):
        mlflow_model.input_schema(mlflow_model.parse(ragged))


def test_other_flavors() -> None:
    pyfunc = mlflow_model.parse("flavors:\n  python_function: {loader_module: my_model}\n")
    assert mlflow_model.route(pyfunc, "", KNOWN).framework == "mlflow"
    hf = "flavors:\n  python_function: {}\n  transformers: {task: text-classification}\n"
    assert (
        mlflow_model.route(mlflow_model.parse(hf), "", KNOWN).framework == "hugging-face-text-classification"
    )
    odd_task = hf.replace("text-classification", "no-such-task")
    assert mlflow_model.route(mlflow_model.parse(odd_task), "", KNOWN).framework == "mlflow"
    torch = "flavors:\n  python_function: {}\n  pytorch: {model_data: data}\n"
    assert mlflow_model.route(mlflow_model.parse(torch), "", KNOWN).framework == "pytorch"
    with pytest.raises(ValueError, match="include none Flightline serves"):
        mlflow_model.route(mlflow_model.parse("flavors:\n  spark: {}\n"), "", KNOWN)
    escaping = SKLEARN.replace("pickled_model: model.skops", "pickled_model: ../../etc/passwd")
    with pytest.raises(NotAnMlflowModel, match="outside the model directory"):
        mlflow_model.route(mlflow_model.parse(escaping), "", KNOWN)
    for broken in ("flavors: {}\n", "- a\n- b\n", "flavors: [\n"):
        with pytest.raises(NotAnMlflowModel):
            mlflow_model.parse(broken)


def test_a_given_schema_is_checked_against_the_signature() -> None:
    signature = pa.schema([("a", pa.float64()), ("b", pa.int64())])
    mlflow_model.check_given(
        pa.schema([("a", pa.float32()), ("b", pa.float64())]), signature
    )  # numeric casts
    mlflow_model.check_given(pa.schema([("inputs", pa.list_(pa.float64(), 2))]), signature)  # the seed's form
    with pytest.raises(SignatureMismatch, match="lacks field 'b'"):
        mlflow_model.check_given(pa.schema([("a", pa.float64())]), signature)
    with pytest.raises(SignatureMismatch, match="field 'c' is not in the signature"):
        mlflow_model.check_given(
            pa.schema([("a", pa.float64()), ("b", pa.int64()), ("c", pa.int64())]), signature
        )
    with pytest.raises(SignatureMismatch, match="field 'b' is string"):
        mlflow_model.check_given(pa.schema([("a", pa.float64()), ("b", pa.string())]), signature)
    with pytest.raises(SignatureMismatch, match="'inputs' has 3 values per row"):
        mlflow_model.check_given(pa.schema([("inputs", pa.list_(pa.float64(), 3))]), signature)


def test_read_finds_mlmodel_at_the_root(tmp_path: Path) -> None:
    with pytest.raises(NotAnMlflowModel, match="no MLmodel"):
        mlflow_model.read(tmp_path)
    (tmp_path / "MLmodel").write_text(SKLEARN)
    assert mlflow_model.read(tmp_path).model_id == "m-abc"
