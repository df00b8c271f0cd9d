"""The frameworks a model can be uploaded as, in the vendor guide's order, and how each one runs.

The catalog holds the guide's data (names, file types, default schemas). Which runtime serves a
framework, whether it converts to ONNX and whether it can be served on this installation come from
the plug-in registry (`plugins.PLUGINS`): a framework no plug-in serves yet is listed as unavailable.
Frameworks that convert to ONNX fall back to their plug-in's own runtime when conversion is not possible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from flightline.runtimes.plugins import (
    CONVERTED_FRAMEWORK,
    ArtifactForm,
    Plugin,
    plugin,
    serving,
    unavailable_reason,
)


class UnknownFramework(ValueError):
    """The framework name is not in the catalog; the message lists the valid names."""


@dataclass(frozen=True)
class FrameworkSpec:
    """One framework of the vendor guide. The seed data (name, file types, the guide's runtime kind and
    upload forms, default schemas) lives here; how it is served comes from the plug-in registry."""

    name: str
    file_types: str
    guide_native: bool  # the guide's runtime kind, reported while no plug-in serves the framework
    guide_forms: tuple[ArtifactForm, ...]  # the guide's upload forms, checked while no plug-in serves it
    default_input_schema: pa.Schema | None = None
    default_output_schema: pa.Schema | None = None
    workaround: str = ""  # what to do meanwhile, while no plug-in serves the framework

    @property
    def plugin(self) -> Plugin | None:
        """The plug-in that accepts its uploads (and converts them, if it has a converter)."""
        return serving(self.name)

    @property
    def converts_to_onnx(self) -> bool:
        """Uploads are converted to ONNX where possible, with the plug-in's own runtime as the fallback."""
        return self.plugin is not None and self.plugin.converts(self.name)

    @property
    def runtime(self) -> str:
        """The runtime that serves an upload (after conversion, for converted ones); "" when none does."""
        if self.plugin is None:
            return ""
        return _converted_runtime().name if self.converts_to_onnx else self.plugin.name

    @property
    def fallback_runtime(self) -> str | None:
        """The runtime that serves an upload the converter could not convert."""
        return self.plugin.name if self.plugin is not None and self.converts_to_onnx else None

    @property
    def native(self) -> bool:
        served = self.runtime
        return plugin(served).native if served else self.guide_native

    @property
    def forms(self) -> tuple[ArtifactForm, ...]:
        if self.plugin is None:
            return self.guide_forms
        return tuple(form for form in self.plugin.forms if form.accepted_for(self.name))

    @property
    def archive(self) -> bool:
        """Uploads are zips, checked before anything is stored."""
        return any(form.archive for form in self.forms)

    @property
    def archive_only(self) -> bool:
        """Every upload must be a zip (one that is not is refused at upload)."""
        return all(form.archive for form in self.forms)

    @property
    def available(self) -> bool:
        """It can be served on this installation."""
        return not self.unavailable()

    @property
    def install_hint(self) -> str:
        """What to install (or do) when it is not `available`; "" when it is."""
        return self.unavailable()

    def unavailable(self, family_built: Callable[[str], bool] | None = None) -> str:
        """ "" when it can be served, else what to install (or do); `family_built` as in
        plugins.unavailable_reason (the server passes its environment cache's answer)."""
        reason = unavailable_reason(self.name, family_built)
        return f"{reason}; {self.workaround}" if reason and self.workaround else reason


def _converted_runtime() -> Plugin:
    found = serving(CONVERTED_FRAMEWORK)
    if found is None:
        raise RuntimeError(f"no plug-in serves {CONVERTED_FRAMEWORK!r}, the converters' output")
    return found


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


_ZIP = (ArtifactForm(".zip", "zip archive", archive=True),)
_ANY = (ArtifactForm("", "any file"),)


def _spec(
    name: str, file_types: str, native: bool, forms: tuple[ArtifactForm, ...], workaround: str = ""
) -> FrameworkSpec:
    return FrameworkSpec(name, file_types, native, forms, workaround=workaround)


def _containerized(
    name: str, file_types: str, schemas: tuple[pa.Schema, pa.Schema] | None = None
) -> FrameworkSpec:
    inputs, outputs = schemas if schemas is not None else (None, None)
    return FrameworkSpec(name, file_types, False, _ZIP, inputs, outputs)


FRAMEWORKS: tuple[FrameworkSpec, ...] = (
    _spec("onnx", "ONNX model (.onnx)", True, _ANY),
    _spec(
        "tensorflow",
        "SavedModel as .zip",
        True,
        _ZIP,
        "export the model with tf2onnx and upload it as framework 'onnx'",
    ),
    _spec("python", "Python script (.py)", True, _ANY),
    _spec(
        "keras",
        "SavedModel as .zip, HDF5 (.h5) or .keras",
        True,
        _ANY,
        "export the model with tf2onnx and upload it as framework 'onnx'",
    ),
    _spec("sklearn", "pickle", True, _ANY),
    _spec(
        "pytorch",
        "TorchScript (.pt or .pth)",
        True,
        _ANY,
        "export the model with torch.onnx.export and upload it as framework 'onnx'",
    ),
    _spec("xgboost", "pickle (XGB files are not supported)", True, _ANY),
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
