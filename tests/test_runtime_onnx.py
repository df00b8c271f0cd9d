"""The ONNX runtime behind a Host: schemas from the graph, numbers equal to onnxruntime, load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from support import runtime_models

from flightline.runtimes import load_runtime
from flightline.runtimes.base import InvalidInput, ModelLoadError, ModelSpec
from flightline.runtimes.host import Host
from flightline.runtimes.onnx import OnnxRuntime, describe
from flightline.runtimes.rules import as_tensor, from_tensor, tensor_type

TENSOR = pa.list_(pa.float32(), runtime_models.FEATURES)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runtime_models.mlp(tmp_path_factory.mktemp("onnx") / "mlp.onnx")


@pytest.fixture(scope="module")
def mlp(mlp_path: Path) -> Host:
    return Host(load_runtime("onnx", ModelSpec(mlp_path, "onnx")))


def _features(rows: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, runtime_models.FEATURES)).astype(np.float32)


def _request(features: np.ndarray) -> pa.RecordBatch:
    return pa.record_batch([from_tensor(features)], names=["tensor"])


def test_schemas_come_from_the_graph(mlp_path: Path) -> None:
    inputs, outputs = describe(mlp_path)
    assert inputs == pa.schema([("tensor", TENSOR)])
    assert outputs == pa.schema([("dense_1", pa.list_(pa.float32(), 1))])


def test_nested_and_scalar_tensors(tmp_path: Path) -> None:
    host = Host(OnnxRuntime.load(ModelSpec(runtime_models.cube(tmp_path / "cube.onnx"), "onnx")))
    assert host.input_schema == pa.schema([("images", tensor_type(pa.float64(), (2, 3)))])
    assert host.output_schema == pa.schema([("sums", pa.list_(pa.float64(), 2)), ("total", pa.int64())])
    images = np.arange(4 * 6, dtype=np.float64).reshape(4, 2, 3)
    outputs = host.run(pa.record_batch([from_tensor(images)], names=["images"]))
    np.testing.assert_array_equal(as_tensor(outputs.column("sums")), images.sum(axis=2))
    np.testing.assert_array_equal(
        outputs.column("total").to_numpy(), images.sum(axis=(1, 2)).astype(np.int64)
    )


def test_numbers_equal_onnxruntime(mlp: Host, mlp_path: Path) -> None:
    features = _features(1000)
    expected = ort.InferenceSession(str(mlp_path), providers=["CPUExecutionProvider"]).run(
        None, {"tensor": features}
    )[0]
    outputs = mlp.run(_request(features))
    np.testing.assert_array_equal(as_tensor(outputs.column("dense_1")), expected)


def test_envelope_and_modes(mlp: Host) -> None:
    request = _request(_features(5))
    result = mlp.respond(request)
    assert result.schema.names == ["time", "in.tensor", "out.dense_1", "check_failures"]
    assert result.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert result.schema.field("check_failures").type == pa.int32()
    assert result.column("check_failures").to_pylist() == [0] * 5
    assert len(set(result.column("time").to_pylist())) == 1
    assert result.column("in.tensor").buffers()[-1].address == request.column(0).buffers()[-1].address
    assert result.schema == mlp.result_schema("envelope")
    outputs = mlp.respond(request, "outputs")
    assert outputs.schema.names == ["out.dense_1"]
    assert outputs.column(0).equals(result.column("out.dense_1"))
    raw = mlp.respond(request, "raw")
    assert raw.schema.names == ["dense_1"]
    assert raw.column(0).equals(result.column("out.dense_1"))


def test_bad_requests_name_the_column(mlp: Host) -> None:
    with pytest.raises(InvalidInput, match="column 'tensor' is ragged: row 1 has 28 values, expected 29"):
        mlp.run(
            pa.record_batch([pa.array([[0.5] * 29, [0.5] * 28], pa.list_(pa.float32()))], names=["tensor"])
        )
    with pytest.raises(InvalidInput, match="column 'tensor' has type fixed_size_list<item: double>"):
        mlp.run(pa.record_batch([from_tensor(_features(2).astype(np.float64))], names=["tensor"]))
    with pytest.raises(InvalidInput, match="column 'tensor' is missing"):
        mlp.run(pa.record_batch([from_tensor(_features(2))], names=["inputs"]))


def test_variable_lists_of_the_right_width_are_accepted(mlp: Host) -> None:
    features = _features(3)
    as_lists = pa.record_batch([pa.array(list(features), pa.list_(pa.float32()))], names=["tensor"])
    np.testing.assert_array_equal(
        as_tensor(mlp.run(as_lists).column(0)), as_tensor(mlp.run(_request(features)).column(0))
    )


def test_declared_output_schema_renames_in_order(mlp_path: Path) -> None:
    spec = ModelSpec(mlp_path, "onnx", output_schema=pa.schema([("fraud", pa.list_(pa.float32(), 1))]))
    host = Host(OnnxRuntime.load(spec))
    assert host.respond(_request(_features(2)), "outputs").schema.names == ["out.fraud"]


def test_declared_input_schema_fixes_dynamic_dimensions(tmp_path: Path) -> None:
    path = runtime_models.mlp(tmp_path / "dyn.onnx", features_dim="F")
    with pytest.raises(
        ModelLoadError, match=r"input 'tensor' has dynamic per-row shape \['\?'\]; declare a fixed"
    ):
        describe(path)
    spec = ModelSpec(path, "onnx", input_schema=pa.schema([("features", TENSOR)]))
    host = Host(OnnxRuntime.load(spec))
    assert host.input_schema.names == ["features"]
    assert host.run(pa.record_batch([from_tensor(_features(2))], names=["features"])).num_rows == 2


def test_incompatible_declared_schemas_fail_at_load(mlp_path: Path) -> None:
    doubles = pa.schema([("tensor", pa.list_(pa.float64(), 29))])
    with pytest.raises(ModelLoadError, match="element type is float, not double"):
        OnnxRuntime.load(ModelSpec(mlp_path, "onnx", input_schema=doubles))
    wrong_width = pa.schema([("tensor", pa.list_(pa.float32(), 30))])
    with pytest.raises(ModelLoadError, match=r"per-row shape is \[29\], not \[30\]"):
        OnnxRuntime.load(ModelSpec(mlp_path, "onnx", input_schema=wrong_width))
    two_outputs = pa.schema([("a", pa.float32()), ("b", pa.float32())])
    with pytest.raises(ModelLoadError, match="declared output schema has 2 columns"):
        OnnxRuntime.load(ModelSpec(mlp_path, "onnx", output_schema=two_outputs))


def test_dynamic_output_shapes_are_probed(tmp_path: Path) -> None:
    _, outputs = describe(runtime_models.dynamic_output(tmp_path / "identity.onnx"))
    assert outputs == pa.schema([("y", pa.list_(pa.float32(), 4))])


def test_fixed_batch_dimension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="fixed batch dimension of 1"):
        describe(runtime_models.mlp(tmp_path / "one.onnx", batch=1))


def test_sklearn_classifier_needs_zipmap_off(tmp_path: Path) -> None:
    features = _features(40)[:, :4]
    classifier = LogisticRegression().fit(features, features[:, 0] > 0)
    zipped = tmp_path / "zipmap.onnx"
    zipped.write_bytes(to_onnx(classifier, features[:1], target_opset=17).SerializeToString())
    with pytest.raises(ModelLoadError, match=r"output_probability.*zipmap"):
        describe(zipped)
    plain = tmp_path / "plain.onnx"
    options = {id(classifier): {"zipmap": False}}
    plain.write_bytes(to_onnx(classifier, features[:1], options=options, target_opset=17).SerializeToString())
    host = Host(OnnxRuntime.load(ModelSpec(plain, "onnx")))
    outputs = host.run(pa.record_batch([from_tensor(features)], names=["X"]))
    np.testing.assert_array_equal(outputs.column("label").to_numpy(), classifier.predict(features))


def test_corrupt_or_missing_files_fail_to_load(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx is not a valid ONNX model"):
        describe(corrupt)
    with pytest.raises(ModelLoadError, match="does not exist"):
        describe(tmp_path / "missing.onnx")


def test_unknown_runtime_name(mlp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown runtime 'pytorch'"):
        load_runtime("pytorch", ModelSpec(mlp_path, "pytorch"))
