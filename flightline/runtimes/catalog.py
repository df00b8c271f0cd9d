"""The frameworks a model can be uploaded as, in the vendor guide's order, and how each one runs.

A framework is served either natively (the upload, or its ONNX conversion, runs in the onnx,
tensorflow or python runtime) or in a containerized runtime of its own ("flight"). Frameworks that
convert to ONNX fall back to `fallback_runtime` when conversion is not possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


class UnknownFramework(ValueError):
    """The framework name is not in the catalog; the message lists the valid names."""


@dataclass(frozen=True)
class FrameworkSpec:
    name: str
    native: bool  # True when `runtime` is a native one (onnx, tensorflow, python)
    runtime: str  # serves native or converted uploads: "onnx" | "tensorflow" | "python" | "flight"
    fallback_runtime: str | None  # registry name of the containerized runtime for unconverted uploads
    converts_to_onnx: bool
    file_types: str
    default_input_schema: pa.Schema | None = None
    default_output_schema: pa.Schema | None = None


def _image(height: int = 100, width: int = 100) -> pa.DataType:
    """An RGB image as nested fixed-size lists: height x width x 3 int64 values."""
    return pa.list_(pa.list_(pa.list_(pa.int64(), 3), width), height)


_BOXES = pa.list_(pa.list_(pa.int64(), 4))

_TEXT_CLASSIFICATION = (
    pa.schema([("inputs", pa.string()), ("top_k", pa.int64()), ("function_to_apply", pa.string())]),
    pa.schema([("label", pa.list_(pa.string(), 2)), ("score", pa.list_(pa.float64(), 2))]),
)

# Input and output schemas of the Hugging Face pipeline tasks, as the vendor guide defines them.
_HUGGING_FACE_TASKS: dict[str, tuple[pa.Schema, pa.Schema]] = {
    "feature-extraction": (
        pa.schema([("inputs", pa.string())]),
        pa.schema([("output", pa.list_(pa.list_(pa.float64(), 128)))]),
    ),
    "image-classification": (
        pa.schema([("inputs", _image()), ("top_k", pa.int64())]),
        pa.schema([("score", pa.list_(pa.float64(), 2)), ("label", pa.list_(pa.string(), 2))]),
    ),
    "image-segmentation": (
        pa.schema(
            [
                ("inputs", _image()),
                ("threshold", pa.float64()),
                ("mask_threshold", pa.float64()),
                ("overlap_mask_area_threshold", pa.float64()),
            ]
        ),
        pa.schema(
            [
                ("score", pa.list_(pa.float64())),
                ("label", pa.list_(pa.string())),
                ("mask", pa.list_(pa.list_(pa.list_(pa.int64(), 100), 100))),
            ]
        ),
    ),
    "image-to-text": (
        pa.schema([("inputs", _image())]),
        pa.schema([("generated_text", pa.list_(pa.string()))]),
    ),
    "object-detection": (
        pa.schema([("inputs", _image()), ("threshold", pa.float64())]),
        pa.schema([("score", pa.list_(pa.float64())), ("label", pa.list_(pa.string())), ("box", _BOXES)]),
    ),
    "question-answering": (
        pa.schema(
            [
                ("question", pa.string()),
                ("context", pa.string()),
                ("top_k", pa.int64()),
                ("doc_stride", pa.int64()),
                ("max_answer_len", pa.int64()),
                ("max_seq_len", pa.int64()),
                ("max_question_len", pa.int64()),
                ("handle_impossible_answer", pa.bool_()),
                ("align_to_words", pa.bool_()),
            ]
        ),
        pa.schema(
            [("score", pa.float64()), ("start", pa.int64()), ("end", pa.int64()), ("answer", pa.string())]
        ),
    ),
    "stable-diffusion-text-2-img": (
        pa.schema(
            [
                ("prompt", pa.string()),
                ("height", pa.int64()),
                ("width", pa.int64()),
                ("num_inference_steps", pa.int64()),
                ("guidance_scale", pa.float64()),
                ("negative_prompt", pa.string()),
                ("num_images_per_prompt", pa.string()),
                ("eta", pa.float64()),
            ]
        ),
        pa.schema([("images", _image(128, 128))]),
    ),
    "summarization": (
        pa.schema(
            [
                ("inputs", pa.string()),
                ("return_text", pa.bool_()),
                ("return_tensors", pa.bool_()),
                ("clean_up_tokenization_spaces", pa.bool_()),
            ]
        ),
        pa.schema([("summary_text", pa.string())]),
    ),
    "text-classification": _TEXT_CLASSIFICATION,
    "translation": (
        pa.schema(
            [
                ("inputs", pa.string()),
                ("return_tensors", pa.bool_()),
                ("return_text", pa.bool_()),
                ("clean_up_tokenization_spaces", pa.bool_()),
                ("src_lang", pa.string()),
                ("tgt_lang", pa.string()),
            ]
        ),
        pa.schema([("translation_text", pa.string())]),
    ),
    "zero-shot-classification": (
        pa.schema(
            [
                ("inputs", pa.string()),
                ("candidate_labels", pa.list_(pa.string(), 2)),
                ("hypothesis_template", pa.string()),
                ("multi_label", pa.bool_()),
            ]
        ),
        pa.schema(
            [
                ("sequence", pa.string()),
                ("scores", pa.list_(pa.float64(), 2)),
                ("labels", pa.list_(pa.string(), 2)),
            ]
        ),
    ),
    "zero-shot-image-classification": (
        pa.schema(
            [
                ("inputs", _image()),
                ("candidate_labels", pa.list_(pa.string(), 2)),
                ("hypothesis_template", pa.string()),
            ]
        ),
        pa.schema([("score", pa.list_(pa.float64(), 2)), ("label", pa.list_(pa.string(), 2))]),
    ),
    "zero-shot-object-detection": (
        pa.schema(
            [
                ("images", _image(480, 640)),
                ("candidate_labels", pa.list_(pa.string(), 3)),
                ("threshold", pa.float64()),
            ]
        ),
        pa.schema([("score", pa.list_(pa.float64())), ("label", pa.list_(pa.string())), ("box", _BOXES)]),
    ),
    # The guide gives no schema for sentiment analysis; it is text classification under another name.
    "sentiment-analysis": _TEXT_CLASSIFICATION,
    "text-generation": (
        pa.schema(
            [
                ("inputs", pa.string()),
                ("return_tensors", pa.bool_()),
                ("return_text", pa.bool_()),
                ("return_full_text", pa.bool_()),
                ("clean_up_tokenization_spaces", pa.bool_()),
                ("prefix", pa.string()),
                ("handle_long_generation", pa.string()),
            ]
        ),
        pa.schema([("generated_text", pa.list_(pa.string(), 1))]),
    ),
    "automatic-speech-recognition": (
        pa.schema([("inputs", pa.list_(pa.float32())), ("return_timestamps", pa.string())]),
        pa.schema(
            [
                ("text", pa.string()),
                (
                    "chunks",
                    pa.list_(pa.struct([("text", pa.string()), ("timestamp", pa.list_(pa.float32()))])),
                ),
            ]
        ),
    ),
}


def _native(name: str, file_types: str) -> FrameworkSpec:
    return FrameworkSpec(name, True, name, None, False, file_types)


def _converted(name: str, file_types: str, fallback: str | None) -> FrameworkSpec:
    return FrameworkSpec(name, True, "onnx", fallback, True, file_types)


def _containerized(
    name: str, file_types: str, schemas: tuple[pa.Schema, pa.Schema] | None = None
) -> FrameworkSpec:
    inputs, outputs = schemas if schemas is not None else (None, None)
    return FrameworkSpec(name, False, "flight", None, False, file_types, inputs, outputs)


FRAMEWORKS: tuple[FrameworkSpec, ...] = (
    _native("onnx", "ONNX model (.onnx)"),
    _native("tensorflow", "SavedModel as .zip"),
    _native("python", "Python script (.py)"),
    _converted("keras", "SavedModel as .zip, HDF5 (.h5) or .keras", None),
    _converted("sklearn", "pickle", "sklearn"),
    _converted("pytorch", "TorchScript (.pt or .pth)", None),
    _converted("xgboost", "pickle (XGB files are not supported)", "sklearn"),
    *(
        _containerized(f"hugging-face-{task}", "Hugging Face pipeline as .zip", schemas)
        for task, schemas in _HUGGING_FACE_TASKS.items()
    ),
    _containerized("custom", "Arbitrary Python (BYOP) .zip: scripts, artifacts and requirements.txt"),
    _containerized("mlflow", "MLflow model directory as .zip"),
)

_BY_NAME = {spec.name: spec for spec in FRAMEWORKS}


def get_framework(name: str) -> FrameworkSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownFramework(
            f"unknown framework {name!r}; valid frameworks: {', '.join(_BY_NAME)}"
        ) from None
