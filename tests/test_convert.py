"""Conversion of sklearn and XGBoost pickles to ONNX, checked against the originals on fresh data, and
the preparation CLI the control plane runs in a subprocess (`flightline.runtimes.prepare`)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier, XGBRegressor

from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.runtimes.catalog import UnknownFramework, get_framework
from flightline.runtimes.conversion import DEFAULT_TARGET_OPSET, InvalidConversionRequest
from flightline.runtimes.convert import convert
from flightline.runtimes.onnx import OnnxRuntime
from flightline.runtimes.sklearn import SklearnRuntime

FEATURES = 4
RNG = np.random.default_rng(42)
TRAIN = RNG.normal(size=(300, FEATURES))
LABELS = (TRAIN[:, 0] + TRAIN[:, 1] > 0).astype(np.int64)
THREE_CLASSES = np.digitize(TRAIN[:, 0], [-0.5, 0.5])
TARGET = TRAIN @ np.array([1.5, -2.0, 0.5, 3.0]) + 4.0
FRESH = RNG.normal(size=(500, FEATURES))


def inputs_schema(value_type: pa.DataType) -> pa.Schema:
    return pa.schema([("inputs", pa.list_(value_type, FEATURES))])


def pickled(tmp_path: Path, model: Any, name: str = "model.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(model))
    return path


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


Case = tuple[str, Callable[[], Any], str]  # framework, fit, label column
CLASSIFIERS: dict[str, Case] = {
    "logistic-regression": ("sklearn", lambda: LogisticRegression().fit(TRAIN, LABELS), "predictions"),
    "random-forest": (
        "sklearn",
        lambda: RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(TRAIN, THREE_CLASSES),
        "predictions",
    ),
    "xgb-classifier": (
        "xgboost",
        lambda: XGBClassifier(n_estimators=8, max_depth=3).fit(TRAIN, THREE_CLASSES),
        "output",
    ),
}
REGRESSORS: dict[str, Case] = {
    "scaled-linear-regression": (
        "sklearn",
        lambda: Pipeline([("scale", StandardScaler()), ("fit", LinearRegression())]).fit(TRAIN, TARGET),
        "predictions",
    ),
    "xgb-regressor": (
        "xgboost",
        lambda: XGBRegressor(n_estimators=8, max_depth=3).fit(TRAIN, TARGET),
        "output",
    ),
}


@pytest.mark.parametrize("case", list(CLASSIFIERS))
def test_classifiers_convert_and_match_the_original(tmp_path: Path, case: str) -> None:
    framework, fit, label_name = CLASSIFIERS[case]
    model = fit()
    result = convert(framework, pickled(tmp_path, model), tmp_path / "out")
    assert result.onnx_path is not None, result.note
    assert result.note == ""
    runner = session(result.onnx_path)
    [graph_input] = runner.get_inputs()
    assert (graph_input.name, graph_input.type, graph_input.shape[1]) == ("inputs", "tensor(float)", FEATURES)
    assert [o.name for o in runner.get_outputs()] == [label_name, "probabilities"]
    fresh = FRESH.astype(np.float32)
    labels, probabilities = runner.run(None, {"inputs": fresh})
    np.testing.assert_array_equal(labels, model.predict(fresh))
    np.testing.assert_allclose(probabilities, model.predict_proba(fresh), atol=1e-4)


@pytest.mark.parametrize("case", list(REGRESSORS))
def test_regressors_convert_to_one_value_per_row(tmp_path: Path, case: str) -> None:
    framework, fit, name = REGRESSORS[case]
    model = fit()
    result = convert(framework, pickled(tmp_path, model), tmp_path / "out")
    assert result.onnx_path is not None, result.note
    runner = session(result.onnx_path)
    [output] = runner.get_outputs()
    assert output.name == name and len(output.shape) == 1  # a scalar column, not a list of one
    fresh = FRESH.astype(np.float32)
    [predictions] = runner.run(None, {"inputs": fresh})
    np.testing.assert_allclose(predictions, model.predict(fresh), rtol=1e-4, atol=1e-3)


def test_float64_schema_converts_with_double_inputs(tmp_path: Path) -> None:
    model = REGRESSORS["scaled-linear-regression"][1]()
    result = convert(
        "sklearn", pickled(tmp_path, model), tmp_path / "out", input_schema=inputs_schema(pa.float64())
    )
    assert result.onnx_path is not None, result.note
    runner = session(result.onnx_path)
    assert runner.get_inputs()[0].type == "tensor(double)"
    [predictions] = runner.run(None, {"inputs": FRESH})
    assert predictions.dtype == np.float64
    np.testing.assert_allclose(predictions, model.predict(FRESH), rtol=1e-12)


def test_xgboost_float64_schema_casts_to_its_float32_trees(tmp_path: Path) -> None:
    model = XGBClassifier(n_estimators=5, max_depth=3).fit(TRAIN, LABELS)
    result = convert(
        "xgboost", pickled(tmp_path, model), tmp_path / "out", input_schema=inputs_schema(pa.float64())
    )
    assert result.onnx_path is not None, result.note
    runner = session(result.onnx_path)
    assert [i.name for i in runner.get_inputs()] == ["inputs"]
    assert runner.get_inputs()[0].type == "tensor(double)"
    labels, _ = runner.run(None, {"inputs": FRESH})
    np.testing.assert_array_equal(labels, model.predict(FRESH))


def test_xgboost_inside_a_sklearn_pipeline_converts(tmp_path: Path) -> None:
    model = Pipeline([("scale", StandardScaler()), ("xgb", XGBClassifier(n_estimators=5))]).fit(TRAIN, LABELS)
    result = convert("xgboost", pickled(tmp_path, model), tmp_path / "out")
    assert result.onnx_path is not None, result.note
    fresh = FRESH.astype(np.float32)
    labels, probabilities = session(result.onnx_path).run(["output", "probabilities"], {"inputs": fresh})
    np.testing.assert_array_equal(labels, model.predict(fresh))
    np.testing.assert_allclose(probabilities, model.predict_proba(fresh), atol=1e-4)


def test_output_schema_names_and_types_win(tmp_path: Path) -> None:
    model = LogisticRegression().fit(TRAIN, LABELS)
    declared = pa.schema([("approved", pa.int32()), ("odds", pa.list_(pa.float64(), 2))])
    result = convert("sklearn", pickled(tmp_path, model), tmp_path / "out", output_schema=declared)
    assert result.onnx_path is not None, result.note
    runner = session(result.onnx_path)
    assert [(o.name, o.type) for o in runner.get_outputs()] == [
        ("approved", "tensor(int32)"),
        ("odds", "tensor(double)"),
    ]
    approved, odds = runner.run(None, {"inputs": FRESH.astype(np.float32)})
    np.testing.assert_array_equal(approved, model.predict(FRESH.astype(np.float32)))
    assert odds.shape == (len(FRESH), 2)


def test_a_shorter_output_schema_drops_the_probabilities(tmp_path: Path) -> None:
    model = LogisticRegression().fit(TRAIN, LABELS)
    declared = pa.schema([("predictions", pa.int32())])
    result = convert("sklearn", pickled(tmp_path, model), tmp_path / "out", output_schema=declared)
    assert result.onnx_path is not None, result.note
    assert [o.name for o in session(result.onnx_path).get_outputs()] == ["predictions"]


def test_target_opset_defaults_to_17_and_follows_the_option(tmp_path: Path) -> None:
    artifact = pickled(tmp_path, LogisticRegression().fit(TRAIN, LABELS))

    def default_opset(path: Path | None) -> int:
        assert path is not None
        imports = {entry.domain: entry.version for entry in onnx.load(path).opset_import}
        return imports[""]

    assert DEFAULT_TARGET_OPSET == 17
    assert default_opset(convert("sklearn", artifact, tmp_path / "default").onnx_path) <= 17
    assert (
        default_opset(convert("sklearn", artifact, tmp_path / "old", options={"target_opset": "9"}).onnx_path)
        <= 9
    )
    with pytest.raises(InvalidConversionRequest, match="target_opset"):
        convert("sklearn", artifact, tmp_path / "bad", options={"target_opset": "latest"})


def test_estimator_without_a_converter_keeps_the_pickle_with_a_note(tmp_path: Path) -> None:
    model = KernelRidge(alpha=0.5).fit(TRAIN, TARGET)
    result = convert("sklearn", pickled(tmp_path, model), tmp_path / "out")
    assert result.onnx_path is None
    assert "skl2onnx has no converter for sklearn.kernel_ridge.KernelRidge" in result.note
    assert "sklearn container runtime" in result.note
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_not_a_pickle_is_a_model_load_error(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ModelLoadError, match="not a loadable pickle"):
        convert("sklearn", artifact, tmp_path / "out")


def test_truncated_pickle_is_a_model_load_error(tmp_path: Path) -> None:
    whole = pickle.dumps(LogisticRegression().fit(TRAIN, LABELS))
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="not a loadable pickle"):
        convert("sklearn", artifact, tmp_path / "out")


def test_pickle_without_an_estimator_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds a builtins\.dict, not a fitted estimator"):
        convert("sklearn", pickled(tmp_path, {"weights": [1, 2]}), tmp_path / "out")


def test_schema_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    artifact = pickled(tmp_path, LogisticRegression().fit(TRAIN, LABELS))
    wide = pa.schema([("inputs", pa.list_(pa.float32(), FEATURES + 1))])
    with pytest.raises(InvalidConversionRequest, match="5 features but the model was trained on 4"):
        convert("sklearn", artifact, tmp_path / "out", input_schema=wide)
    with pytest.raises(InvalidConversionRequest, match="exactly one column 'inputs'"):
        convert("sklearn", artifact, tmp_path / "out", input_schema=pa.schema([("x", pa.float32())]))
    too_many = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("c", pa.float64())])
    with pytest.raises(InvalidConversionRequest, match="only gives predict and predict_proba"):
        convert("sklearn", artifact, tmp_path / "out", output_schema=too_many)


@pytest.mark.parametrize(
    "framework", ["onnx", "python", "tensorflow", "hugging-face-summarization", "mlflow"]
)
def test_frameworks_that_do_not_convert_need_nothing(tmp_path: Path, framework: str) -> None:
    artifact = tmp_path / "anything"
    artifact.write_bytes(b"not inspected")
    result = convert(framework, artifact, tmp_path / "out")
    assert (result.onnx_path, result.note) == (None, "")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("framework", "family"), [("pytorch", "torch"), ("keras", "tensorflow")])
def test_frameworks_of_another_converter_are_left_alone_with_an_honest_hint(
    tmp_path: Path, framework: str, family: str
) -> None:
    # Their own plug-ins convert them (in their family's environment); sklearn's converter does not.
    result = convert(framework, tmp_path / "model.pt", tmp_path / "out")
    assert (result.onnx_path, result.note) == (None, "")
    spec = get_framework(framework)
    assert f"flightline runtimes install {family}" in spec.install_hint
    assert "framework 'onnx'" in spec.install_hint  # the workaround meanwhile


def test_unknown_framework_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownFramework):
        convert("scikit", tmp_path / "model.pkl", tmp_path / "out")


def run_cli(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "flightline.runtimes.prepare", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, (done.stdout, done.stderr)
    reply: dict[str, Any] = json.loads(lines[0])
    return done.returncode, reply


def test_cli_converts_with_schema_files_in_a_subprocess(tmp_path: Path) -> None:
    model = XGBRegressor(n_estimators=5, max_depth=3).fit(TRAIN, TARGET)
    schema_file = tmp_path / "input.arrow"
    schema_file.write_bytes(inputs_schema(pa.float64()).serialize().to_pybytes())
    output_file = tmp_path / "output.arrow"
    output_file.write_bytes(pa.schema([("price", pa.float64())]).serialize().to_pybytes())
    code, reply = run_cli(
        "--framework", "xgboost",
        "--artifact", str(pickled(tmp_path, model)),
        "--out", str(tmp_path / "out"),
        "--input-schema", str(schema_file),
        "--output-schema", str(output_file),
        "--options", json.dumps({"target_opset": "15"}),
    )  # fmt: skip
    assert code == 0 and (reply["runtime"], reply["artifact"], reply["note"]) == ("onnx", "model.onnx", "")
    served = pa.ipc.read_schema(pa.py_buffer((tmp_path / "out" / "output_schema.arrow").read_bytes()))
    assert served.names == ["price"]
    runner = session(tmp_path / "out" / reply["artifact"])
    [price] = runner.run(["price"], {"inputs": FRESH})
    assert price.dtype == np.float64
    np.testing.assert_allclose(price, model.predict(FRESH), rtol=1e-5, atol=1e-4)


def test_cli_reports_a_kept_pickle_with_its_note(tmp_path: Path) -> None:
    artifact = pickled(tmp_path, KernelRidge().fit(TRAIN, TARGET))
    code, reply = run_cli(
        "--framework", "sklearn", "--artifact", str(artifact), "--out", str(tmp_path / "out")
    )
    assert code == 0
    assert (reply["runtime"], reply["artifact"]) == ("sklearn", "") and "KernelRidge" in reply["note"]


def test_cli_exits_3_for_a_model_that_cannot_load(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"\x80\x04garbage")
    code, reply = run_cli(
        "--framework", "sklearn", "--artifact", str(artifact), "--out", str(tmp_path / "out")
    )
    assert code == 3
    assert "not a loadable pickle" in reply["error"]


def test_cli_exits_2_for_a_bad_request(tmp_path: Path) -> None:
    artifact = pickled(tmp_path, LogisticRegression().fit(TRAIN, LABELS))
    code, reply = run_cli(
        "--framework", "scikit", "--artifact", str(artifact), "--out", str(tmp_path / "out")
    )
    assert code == 2 and "valid frameworks" in reply["error"]
    code, reply = run_cli(
        "--framework",
        "sklearn",
        "--artifact",
        str(artifact),
        "--out",
        str(tmp_path / "out"),
        "--options",
        "[1]",
    )
    assert code == 2 and "JSON object" in reply["error"]


def test_converted_and_fallback_paths_serve_the_same_columns(tmp_path: Path) -> None:
    model = LogisticRegression().fit(TRAIN, LABELS)
    artifact = pickled(tmp_path, model)
    result = convert("sklearn", artifact, tmp_path / "out")
    assert result.onnx_path is not None, result.note
    converted = OnnxRuntime.load(ModelSpec(result.onnx_path, "onnx"))
    original = SklearnRuntime.load(ModelSpec(artifact, "sklearn"))
    assert converted.input_schema == original.input_schema
    assert converted.output_schema.names == original.output_schema.names == ["predictions", "probabilities"]
    column = pa.FixedSizeListArray.from_arrays(pa.array(FRESH.astype(np.float32).reshape(-1)), FEATURES)
    batch = pa.RecordBatch.from_arrays([column], schema=converted.input_schema)
    assert converted.infer(batch).column("predictions").equals(original.infer(batch).column("predictions"))
