"""The sklearn fallback runtime: original pickles the ONNX converters could not handle, served directly."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from xgboost import XGBClassifier

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.runtimes.convert import convert
from flightline.runtimes.server import LoadSpec
from flightline.runtimes.sklearn import SklearnRuntime

FEATURES = 3
RNG = np.random.default_rng(3)
TRAIN = RNG.normal(size=(120, FEATURES))
LABELS = (TRAIN[:, 0] > TRAIN[:, 2]).astype(np.int64)
TARGET = TRAIN @ np.array([2.0, -1.0, 0.5])
FRESH = RNG.normal(size=(40, FEATURES))


def spec_for(tmp_path: Path, model: Any, framework: str = "sklearn", **schemas: pa.Schema) -> ModelSpec:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(pickle.dumps(model))
    return ModelSpec(artifact, framework, schemas.get("input_schema"), schemas.get("output_schema"))


def batch_of(features: np.ndarray, value_type: pa.DataType | None = None) -> pa.RecordBatch:
    value_type = value_type or pa.float32()
    flat = pa.array(features.astype(value_type.to_pandas_dtype()).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, features.shape[1])
    return pa.RecordBatch.from_arrays([column], schema=pa.schema([("inputs", column.type)]))


def test_serves_a_regressor_skl2onnx_cannot_convert(tmp_path: Path) -> None:
    model = KernelRidge(alpha=0.3).fit(TRAIN, TARGET)
    spec = spec_for(tmp_path, model)
    assert convert("sklearn", spec.artifact, tmp_path / "out").onnx_path is None
    runtime = load_runtime("sklearn", spec)
    assert isinstance(runtime, SklearnRuntime)
    assert runtime.input_schema == pa.schema([("inputs", pa.list_(pa.float32(), FEATURES))])
    assert runtime.output_schema == pa.schema([("predictions", pa.float64())])
    result = runtime.infer(batch_of(FRESH))
    expected = model.predict(FRESH.astype(np.float32))
    np.testing.assert_allclose(result.column("predictions").to_numpy(), expected)


def test_serves_a_classifier_with_probabilities(tmp_path: Path) -> None:
    model = NearestCentroid().fit(TRAIN, LABELS)
    runtime = SklearnRuntime.load(spec_for(tmp_path, model))
    assert runtime.output_schema == pa.schema(
        [("predictions", pa.int64()), ("probabilities", pa.list_(pa.float64(), 2))]
    )
    result = runtime.infer(batch_of(FRESH))
    fresh = FRESH.astype(np.float32)
    np.testing.assert_array_equal(result.column("predictions").to_numpy(), model.predict(fresh))
    probabilities = result.column("probabilities").flatten().to_numpy().reshape(-1, 2)
    np.testing.assert_allclose(probabilities, model.predict_proba(fresh))


def test_declared_schemas_set_the_input_precision_and_output_types(tmp_path: Path) -> None:
    model = NearestCentroid().fit(TRAIN, LABELS)
    declared_in = pa.schema([("inputs", pa.list_(pa.float64(), FEATURES))])
    declared_out = pa.schema([("class", pa.int32()), ("odds", pa.list_(pa.float32(), 2))])
    runtime = SklearnRuntime.load(
        spec_for(tmp_path, model, input_schema=declared_in, output_schema=declared_out)
    )
    assert runtime.input_schema == declared_in
    assert runtime.output_schema == declared_out
    result = runtime.infer(batch_of(FRESH, pa.float64()))
    assert result.schema == declared_out
    np.testing.assert_array_equal(result.column("class").to_numpy(), model.predict(FRESH))


def test_xgboost_outputs_are_named_output(tmp_path: Path) -> None:
    model = XGBClassifier(n_estimators=4, max_depth=2).fit(TRAIN, LABELS)
    runtime = SklearnRuntime.load(spec_for(tmp_path, model, framework="xgboost"))
    assert runtime.output_schema.names == ["output", "probabilities"]
    result = runtime.infer(batch_of(FRESH))
    np.testing.assert_array_equal(result.column("output").to_numpy(), model.predict(FRESH.astype(np.float32)))


def test_a_sliced_batch_reads_only_its_own_rows(tmp_path: Path) -> None:
    model = KernelRidge().fit(TRAIN, TARGET)
    runtime = SklearnRuntime.load(spec_for(tmp_path, model))
    sliced = batch_of(FRESH).slice(10, 5)
    result = runtime.infer(sliced)
    expected = model.predict(FRESH[10:15].astype(np.float32))
    np.testing.assert_allclose(result.column("predictions").to_numpy(), expected)


def test_a_model_fitted_on_a_dataframe_gets_its_column_names(tmp_path: Path) -> None:
    frame = pd.DataFrame(TRAIN, columns=["age", "income", "debt"])
    model = LogisticRegression().fit(frame, LABELS)
    runtime = SklearnRuntime.load(spec_for(tmp_path, model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns when a DataFrame-fitted model gets a bare array
        result = runtime.infer(batch_of(FRESH))
    expected = model.predict(pd.DataFrame(FRESH.astype(np.float32), columns=frame.columns))
    np.testing.assert_array_equal(result.column("predictions").to_numpy(), expected)


def test_corrupt_pickle_is_a_model_load_error(tmp_path: Path) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"\x80\x05not really")
    with pytest.raises(ModelLoadError, match="not a loadable pickle"):
        SklearnRuntime.load(ModelSpec(artifact, "sklearn"))


def test_missing_file_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        SklearnRuntime.load(ModelSpec(tmp_path / "gone.pkl", "sklearn"))


def test_schemas_that_do_not_fit_are_model_load_errors(tmp_path: Path) -> None:
    model = KernelRidge().fit(TRAIN, TARGET)
    wide = pa.schema([("inputs", pa.list_(pa.float32(), FEATURES + 2))])
    with pytest.raises(ModelLoadError, match="5 features but the model was trained on 3"):
        SklearnRuntime.load(spec_for(tmp_path, model, input_schema=wide))
    as_list = pa.schema([("predictions", pa.list_(pa.float64(), 2))])
    with pytest.raises(ModelLoadError, match="output column 'predictions' is declared"):
        SklearnRuntime.load(spec_for(tmp_path, model, output_schema=as_list))


@pytest.fixture
def served_kernel_ridge(tmp_path: Path) -> Iterator[tuple[flight.FlightClient, KernelRidge]]:
    """The sklearn runtime in a runtime server process, loaded as the backend loads it."""
    model = KernelRidge(alpha=0.2).fit(TRAIN, TARGET)
    spec = spec_for(tmp_path, model)
    sha256 = hashlib.sha256(spec.artifact.read_bytes()).hexdigest()
    (tmp_path / "artifacts").mkdir()
    shutil.copyfile(spec.artifact, tmp_path / "artifacts" / sha256)
    process = subprocess.Popen(
        [sys.executable, "-m", "flightline.runtimes.server", "--artifacts", str(tmp_path / "artifacts")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()  # blocks until the server listens
        assert ready[0] == "FLIGHTLINE_READY", ready
        with flight.FlightClient(ready[1]) as client:
            body = LoadSpec("kr.0", "sklearn", sha256, "sklearn", spec.input_schema, spec.output_schema)
            assert [r.body.to_pybytes() for r in client.do_action(flight.Action("load", body.to_json()))] == [
                b"ok"
            ]
            yield client, model
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_runtime_process_serves_the_pickle_over_flight(
    served_kernel_ridge: tuple[flight.FlightClient, KernelRidge],
) -> None:
    client, model = served_kernel_ridge
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("kr.0", "raw"))
    request = batch_of(FRESH)
    with writer:
        writer.begin(request.schema)
        writer.write_batch(request)
        result = reader.read_chunk().data
    expected = model.predict(FRESH.astype(np.float32))
    np.testing.assert_allclose(result.column("predictions").to_numpy(), expected)
