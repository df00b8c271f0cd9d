"""The framework catalog against the vendor guide's list, runtimes and Hugging Face schemas."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flightline.runtimes.catalog import FRAMEWORKS, UnknownFramework, get_framework
from flightline.runtimes.plugins import NO_PLUGIN_HINT, PLUGINS

HUGGING_FACE_TASKS = [
    "feature-extraction",
    "image-classification",
    "image-segmentation",
    "image-to-text",
    "object-detection",
    "question-answering",
    "stable-diffusion-text-2-img",
    "summarization",
    "text-classification",
    "translation",
    "zero-shot-classification",
    "zero-shot-image-classification",
    "zero-shot-object-detection",
    "sentiment-analysis",
    "text-generation",
    "automatic-speech-recognition",
]
SEED_ORDER = [
    "onnx",
    "tensorflow",
    "python",
    "keras",
    "sklearn",
    "pytorch",
    "xgboost",
    *(f"hugging-face-{task}" for task in HUGGING_FACE_TASKS),
    "custom",
    "mlflow",
]


def test_catalog_lists_every_seed_framework_in_order() -> None:
    assert [spec.name for spec in FRAMEWORKS] == SEED_ORDER


@pytest.mark.parametrize("name", ["onnx", "python"])
def test_native_frameworks_run_in_their_own_runtime_unconverted(name: str) -> None:
    spec = get_framework(name)
    assert (spec.native, spec.runtime, spec.converts_to_onnx, spec.fallback_runtime) == (
        True,
        name,
        False,
        None,
    )
    assert spec.available and spec.install_hint == ""


@pytest.mark.parametrize("name", ["sklearn", "xgboost"])
def test_pickle_frameworks_convert_to_onnx_with_the_sklearn_fallback(name: str) -> None:
    spec = get_framework(name)
    assert (spec.runtime, spec.converts_to_onnx, spec.fallback_runtime) == ("onnx", True, "sklearn")
    assert "pickle" in spec.file_types
    assert spec.available


# Served by plug-ins in family environments: TensorFlow natively, Keras and PyTorch converted to ONNX
# with their own runtime as the fallback; unavailable (with the command to run) until the family is built.
@pytest.mark.parametrize(
    ("name", "runtime", "fallback", "family"),
    [
        ("tensorflow", "tensorflow", None, "tensorflow"),
        ("keras", "onnx", "tensorflow", "tensorflow"),
        ("pytorch", "onnx", "torchscript", "torch"),
    ],
)
def test_family_frameworks_name_their_runtime_and_how_to_build_it(
    name: str, runtime: str, fallback: str | None, family: str
) -> None:
    spec = get_framework(name)
    assert (spec.native, spec.runtime, spec.converts_to_onnx, spec.fallback_runtime) == (
        True,
        runtime,
        fallback is not None,
        fallback,
    )
    assert f"flightline runtimes install {family}" in spec.unavailable(lambda _family: False)
    assert spec.unavailable(lambda built: built == family) == ""


def test_keras_takes_every_form_tensorflow_only_savedmodel_zips() -> None:
    keras, tensorflow = get_framework("keras"), get_framework("tensorflow")
    assert [f.suffix for f in keras.forms] == [".zip", ".h5", ".keras"] and not keras.archive_only
    assert [f.suffix for f in tensorflow.forms] == [".zip"] and tensorflow.archive_only


@pytest.mark.parametrize("name", [f"hugging-face-{task}" for task in HUGGING_FACE_TASKS])
def test_containerized_frameworks_are_zips_not_served_yet(name: str) -> None:
    spec = get_framework(name)
    assert (spec.native, spec.runtime, spec.converts_to_onnx) == (False, "", False)
    assert spec.archive and not spec.available and spec.install_hint == NO_PLUGIN_HINT


@pytest.mark.parametrize(("name", "runtime"), [("custom", "byop"), ("mlflow", "pyfunc")])
def test_custom_and_mlflow_zips_are_served_by_their_plugins(name: str, runtime: str) -> None:
    spec = get_framework(name)
    assert (spec.native, spec.runtime, spec.converts_to_onnx) == (False, runtime, False)
    assert spec.archive and spec.available and spec.install_hint == ""


def test_every_runtime_the_catalog_names_is_a_plugin() -> None:
    named = {spec.runtime for spec in FRAMEWORKS} | {spec.fallback_runtime for spec in FRAMEWORKS}
    served = {"onnx", "python", "sklearn", "pyfunc", "byop", "tensorflow", "torchscript"}
    assert named - {"", None} == served <= {p.name for p in PLUGINS}
    fallbacks = {spec.fallback_runtime for spec in FRAMEWORKS} - {None}
    assert fallbacks == {"sklearn", "tensorflow", "torchscript"}


@pytest.mark.parametrize("task", HUGGING_FACE_TASKS)
def test_hugging_face_default_schemas_round_trip_through_ipc(task: str) -> None:
    spec = get_framework(f"hugging-face-{task}")
    for schema in (spec.default_input_schema, spec.default_output_schema):
        assert schema is not None and len(schema) > 0
        assert pa.ipc.read_schema(pa.py_buffer(schema.serialize().to_pybytes())).equals(schema)


def test_hugging_face_schemas_follow_the_guide() -> None:
    image = get_framework("hugging-face-image-classification").default_input_schema
    assert image is not None
    assert image.field("inputs").type == pa.list_(pa.list_(pa.list_(pa.int64(), 3), 100), 100)
    detection = get_framework("hugging-face-zero-shot-object-detection").default_input_schema
    assert detection is not None
    assert detection.field("images").type == pa.list_(pa.list_(pa.list_(pa.int64(), 3), 640), 480)
    speech = get_framework("hugging-face-automatic-speech-recognition").default_output_schema
    assert speech is not None and speech.names == ["text", "chunks"]
    qa = get_framework("hugging-face-question-answering").default_output_schema
    assert qa == pa.schema(
        [("score", pa.float64()), ("start", pa.int64()), ("end", pa.int64()), ("answer", pa.string())]
    )


def test_sentiment_analysis_uses_the_text_classification_schemas() -> None:
    sentiment = get_framework("hugging-face-sentiment-analysis")
    classification = get_framework("hugging-face-text-classification")
    assert sentiment.default_input_schema == classification.default_input_schema
    assert sentiment.default_output_schema == classification.default_output_schema


def test_pickle_and_native_frameworks_have_no_default_schema() -> None:
    for name in ("onnx", "sklearn", "xgboost", "custom", "mlflow"):
        spec = get_framework(name)
        assert spec.default_input_schema is None and spec.default_output_schema is None


def test_unknown_framework_is_a_value_error_listing_the_valid_names() -> None:
    with pytest.raises(UnknownFramework) as caught:
        get_framework("scikit")
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "'scikit'" in message
    assert all(name in message for name in SEED_ORDER)
