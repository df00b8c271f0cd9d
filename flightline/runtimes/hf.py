"""Hugging Face pipelines: the sixteen `hugging-face-<task>` frameworks of the catalog, one runtime.

An artifact is a zip of a pipeline's `save_pretrained` folder (the folder itself, or one folder inside
the zip). Loading never touches a model hub (HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE are set before
transformers is imported) and a file the task needs that the folder lacks is a ModelLoadError naming it.
This module runs only in the `hf` environment (transformers 4.x, a CPU torch, Pillow, diffusers): by
sandboxed runtime servers and preparation processes, never by a server process.

The schemas are the catalog's (the seed's, field for field) unless the upload gives its own, which may
change sizes (a 384-wide embedding, 224x224 images) and is checked at upload (`describe`): field names
and kinds against the task's, then one generated row through the model, whose outputs must fit it.

Per batch: images arrive as int64 (H, W, 3) tensors and become PIL images, audio as float32 lists at the
feature extractor's sampling rate. Optional input fields (top_k, threshold...) are the pipeline's keyword
arguments, per row: rows are grouped by the arguments they set, and each group is ONE pipeline call over
its rows (`batch_size` = the group's size). For the tasks that generate (image-to-text, summarization,
translation, text-generation) and text-classification, input fields beyond the task's are forwarded
too (to `generate`; for text-classification, to its tokenizer), as the seed describes; an argument the
model rejects is an InvalidInput naming it, in our words (the model's message is only logged).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pyarrow as pa
import pyarrow.types as pt

from flightline.runtimes.archives import unpacked
from flightline.runtimes.base import InvalidInput, ModelLoadError, ModelSpec, Runtime
from flightline.runtimes.catalog import get_framework
from flightline.runtimes.host import Host, ModelOutputError
from flightline.runtimes.rules import as_tensor

# Before transformers, diffusers or huggingface_hub is imported: nothing may reach a hub, whatever the
# caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
# Before torch is imported: its OpenMP threads sleep between parallel regions instead of spinning. A
# runtime server shares the cores with other runtime servers and the front door, and spinning threads
# that outnumber the free cores collapse: a tiny BERT's 1-row call took 133 ms spinning, 2 ms passive, on
# a loaded 2-core machine (2026-12-01). An operator's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger(__name__)

PREFIX = "hugging-face-"
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER = "tokenizer_config.json"
_PROCESSOR = "preprocessor_config.json"
_DIFFUSION_INDEX = "model_index.json"


class _Mismatch(ModelOutputError):
    """The model's outputs do not fit the output schema (a fault of the model or of the given schema)."""


@dataclass(frozen=True)
class Task:
    """What differs between pipeline tasks: which fields are the rows' inputs, which are arguments,
    how one group of rows is one pipeline call, and how its results become the output columns."""

    required: tuple[str, ...]  # input fields every row must set
    files: tuple[str, ...]  # files of the folder the task needs besides config.json and the weights
    call: Callable[[Any, list[Any], dict[str, Any]], list[Any]]  # (pipeline, items, kwargs) -> per row
    outputs: Callable[[list[Any]], dict[str, list[Any]]]  # per-row results -> output field values
    forwards: bool = False  # input fields beyond the task's go to generate (or the tokenizer)
    grouped: tuple[str, ...] = ()  # required fields that are call arguments (candidate_labels)
    pipeline_task: str = ""  # transformers' name, when it differs from ours
    images: tuple[str, ...] = ()  # input fields that are (H, W, 3) images
    audio: tuple[str, ...] = ()  # input fields that are float32 waveforms
    limits: tuple[tuple[str, str], ...] = ()  # (argument, output field): the argument sets its list size


# -- calls: one pipeline call over a group's items ------------------------------------------------------


def _listed(result: Any, rows: int) -> list[Any]:
    """A pipeline's answer for `rows` inputs as one entry per input (some pipelines unwrap one input)."""
    if rows == 1 and not (isinstance(result, list) and len(result) == 1):
        return [result]
    if not isinstance(result, list) or len(result) != rows:
        raise _Mismatch(f"the pipeline answered {rows} inputs with {_count(result)} results")
    return result


def _count(result: Any) -> int:
    return len(result) if isinstance(result, list) else 1


def _plain(pipe: Any, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    return _listed(pipe(items, batch_size=len(items), **kwargs), len(items))


def _first(entry: Any) -> Any:
    """One answer per row: the best of a ranked list (question answering with top_k > 1)."""
    while isinstance(entry, list):
        entry = entry[0] if entry else {}
    return entry


def _question_answering(pipe: Any, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    questions = [item["question"] for item in items]
    contexts = [item["context"] for item in items]
    result = pipe(question=questions, context=contexts, batch_size=len(items), **kwargs)
    if len(items) == 1 and isinstance(result, dict | list) and not _is_nested(result):
        result = [result]
    return [_first(entry) for entry in _listed(result, len(items))]


def _is_nested(result: Any) -> bool:
    return isinstance(result, list) and bool(result) and isinstance(result[0], list)


def _image_to_text(pipe: Any, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    # Its pipeline takes max_new_tokens itself and every other generate argument in generate_kwargs.
    named = {k: kwargs.pop(k) for k in ("max_new_tokens", "prompt") if k in kwargs}
    generate = {"generate_kwargs": kwargs} if kwargs else {}
    return _listed(pipe(items, batch_size=len(items), **named, **generate), len(items))


def _stable_diffusion(pipe: Any, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    torch = importlib.import_module("torch")
    copies = kwargs.pop("num_images_per_prompt", None)
    if copies not in (None, "1", 1):
        raise InvalidInput("num_images_per_prompt must be 1: the output holds one image per row")
    negative = kwargs.pop("negative_prompt", None)
    if negative is not None:
        kwargs["negative_prompt"] = [negative] * len(items)
    # One generator per row, seeded alike: a row's image depends on its own inputs only, so it is the
    # same in any batch (adaptive batching may merge rows from different requests).
    generators = [torch.Generator().manual_seed(0) for _ in items]
    with torch.inference_mode():
        images = pipe(prompt=items, generator=generators, output_type="np", **kwargs).images
    pixels = np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(np.int64)
    return list(pixels)


# -- outputs: per-row results as output field values ---------------------------------------------------


def _ranked(score: str = "score", label: str = "label") -> Callable[[list[Any]], dict[str, list[Any]]]:
    def outputs(results: list[Any]) -> dict[str, list[Any]]:
        return {
            score: [[float(d["score"]) for d in row] for row in results],
            label: [[str(d["label"]) for d in row] for row in results],
        }

    return outputs


def _box(entry: dict[str, Any]) -> list[int]:
    box = entry["box"]
    return [int(box["xmin"]), int(box["ymin"]), int(box["xmax"]), int(box["ymax"])]


def _detections(results: list[Any]) -> dict[str, list[Any]]:
    return {
        "score": [[float(d["score"]) for d in row] for row in results],
        "label": [[str(d["label"]) for d in row] for row in results],
        "box": [[_box(d) for d in row] for row in results],
    }


def _segments(results: list[Any]) -> dict[str, list[Any]]:
    return {
        # Semantic segmentation has no score per segment: null.
        "score": [[None if d.get("score") is None else float(d["score"]) for d in row] for row in results],
        "label": [[str(d["label"]) for d in row] for row in results],
        "mask": [[np.asarray(d["mask"], dtype=np.int64).tolist() for d in row] for row in results],
    }


def _texts(key: str, as_list: bool = False) -> Callable[[list[Any]], dict[str, list[Any]]]:
    """A text per row (or the list of generated texts, `as_list`). return_tensors=True answers token
    ids instead of text, which the schema has no field for: null."""

    def outputs(results: list[Any]) -> dict[str, list[Any]]:
        if as_list:
            rows = [row if isinstance(row, list) else [row] for row in results]
            return {key: [[d.get(key) for d in row] for row in rows]}
        return {key: [_first(row).get(key) for row in results]}

    return outputs


def _answers(results: list[Any]) -> dict[str, list[Any]]:
    return {
        "score": [float(r["score"]) if "score" in r else None for r in results],
        "start": [int(r["start"]) if "start" in r else None for r in results],
        "end": [int(r["end"]) if "end" in r else None for r in results],
        "answer": [r.get("answer") for r in results],
    }


def _zero_shot(results: list[Any]) -> dict[str, list[Any]]:
    return {
        "sequence": [r["sequence"] for r in results],
        "scores": [[float(s) for s in r["scores"]] for r in results],
        "labels": [list(r["labels"]) for r in results],
    }


def _speech(results: list[Any]) -> dict[str, list[Any]]:
    def chunks(result: dict[str, Any]) -> list[dict[str, Any]] | None:
        found = result.get("chunks")
        if found is None:
            return None
        return [
            {"text": c["text"], "timestamp": [None if t is None else float(t) for t in c["timestamp"]]}
            for c in found
        ]

    return {"text": [r["text"] for r in results], "chunks": [chunks(r) for r in results]}


def _embeddings(results: list[Any]) -> dict[str, list[Any]]:
    # feature-extraction with return_tensors: (1, tokens, hidden) per row.
    return {"output": [np.asarray(r, dtype=np.float64).reshape(-1, np.shape(r)[-1]) for r in results]}


def _images(results: list[Any]) -> dict[str, list[Any]]:
    return {"images": results}


_TEXT = (_TOKENIZER,)
_IMAGE = (_PROCESSOR,)
_BOTH = (_PROCESSOR, _TOKENIZER)

TASKS: dict[str, Task] = {
    "feature-extraction": Task(
        ("inputs",), _TEXT, lambda p, items, kw: _plain(p, items, {**kw, "return_tensors": True}), _embeddings
    ),
    "image-classification": Task(
        ("inputs",), _IMAGE, _plain, _ranked(), images=("inputs",), limits=(("top_k", "label"),)
    ),
    "image-segmentation": Task(("inputs",), _IMAGE, _plain, _segments, images=("inputs",)),
    "image-to-text": Task(
        ("inputs",), _BOTH, _image_to_text, _texts("generated_text", as_list=True), True, images=("inputs",)
    ),
    "object-detection": Task(("inputs",), _IMAGE, _plain, _detections, images=("inputs",)),
    "question-answering": Task(("question", "context"), _TEXT, _question_answering, _answers),
    "stable-diffusion-text-2-img": Task(("prompt",), (), _stable_diffusion, _images),
    "summarization": Task(("inputs",), _TEXT, _plain, _texts("summary_text"), True),
    "text-classification": Task(("inputs",), _TEXT, _plain, _ranked(), True, limits=(("top_k", "label"),)),
    "translation": Task(("inputs",), _TEXT, _plain, _texts("translation_text"), True),
    "zero-shot-classification": Task(
        ("inputs", "candidate_labels"), _TEXT, _plain, _zero_shot, grouped=("candidate_labels",)
    ),
    "zero-shot-image-classification": Task(
        ("inputs", "candidate_labels"),
        _BOTH,
        _plain,
        _ranked(),
        grouped=("candidate_labels",),
        images=("inputs",),
    ),
    "zero-shot-object-detection": Task(
        ("images", "candidate_labels"), _BOTH, _plain, _detections, images=("images",)
    ),
    "sentiment-analysis": Task(("inputs",), _TEXT, _plain, _ranked(), True, limits=(("top_k", "label"),)),
    "text-generation": Task(("inputs",), _TEXT, _plain, _texts("generated_text", as_list=True), True),
    "automatic-speech-recognition": Task(("inputs",), _BOTH, _plain, _speech, audio=("inputs",)),
}


# -- schemas ----------------------------------------------------------------------------------------


def _is_list(data_type: pa.DataType) -> bool:
    return bool(pt.is_list(data_type) or pt.is_large_list(data_type) or pt.is_fixed_size_list(data_type))


def _compatible(given: pa.DataType, default: pa.DataType) -> bool:
    """Same kind as the seed's type: lists where it has lists (of any size, fixed or not), the same
    struct fields, the same leaf types."""
    if _is_list(default):
        return _is_list(given) and _compatible(given.value_type, default.value_type)
    if pt.is_struct(default):
        return (
            pt.is_struct(given)
            and [f.name for f in given] == [f.name for f in default]
            and all(_compatible(g.type, d.type) for g, d in zip(given, default, strict=True))
        )
    return bool(given.equals(default))


def image_shape(data_type: pa.DataType) -> tuple[int, int] | None:
    """(height, width) of an int64 (H, W, 3) image type; None for anything else."""
    shape: list[int] = []
    while pt.is_fixed_size_list(data_type):
        shape.append(data_type.list_size)
        data_type = data_type.value_type
    if len(shape) == 3 and shape[2] == 3 and data_type.equals(pa.int64()):
        return shape[0], shape[1]
    return None


def _scalar(data_type: pa.DataType) -> bool:
    return bool(
        pt.is_integer(data_type)
        or pt.is_floating(data_type)
        or pt.is_boolean(data_type)
        or pt.is_string(data_type)
    )


def check_schemas(framework: str, input_schema: pa.Schema, output_schema: pa.Schema) -> None:
    """The schemas against the task's (the catalog's): the same fields (beyond them only forwarded
    arguments, for the tasks that forward), of the same kinds, images of a fixed (H, W, 3) shape.
    Raises ModelLoadError naming the field."""
    task = TASKS[_task_name(framework)]
    spec = get_framework(framework)
    default_in, default_out = spec.default_input_schema, spec.default_output_schema
    assert default_in is not None and default_out is not None
    for name in task.required:
        if name not in input_schema.names:
            raise ModelLoadError(f"input_schema lacks field {name!r}, which {framework} requires")
    for item in input_schema:
        index = default_in.get_field_index(item.name)
        if index < 0:
            if not task.forwards:
                raise ModelLoadError(
                    f"input_schema field {item.name!r} is not an input of {framework}; its inputs are "
                    f"{default_in.names}"
                )
            if not _scalar(item.type):
                raise ModelLoadError(
                    f"input_schema field {item.name!r} is forwarded to the model as an argument and must "
                    f"be a boolean, number or string, not {item.type}"
                )
            continue
        expected = default_in.field(index).type
        if not _compatible(item.type, expected):
            raise ModelLoadError(
                f"input_schema field {item.name!r} is {item.type}; {framework} has {expected}"
            )
        if item.name in task.images and image_shape(item.type) is None:
            raise ModelLoadError(
                f"input_schema field {item.name!r} must be an int64 image of a fixed (height, width, 3) "
                f"shape, e.g. {default_in.field(index).type}"
            )
    if sorted(output_schema.names) != sorted(default_out.names):
        raise ModelLoadError(
            f"output_schema has fields {output_schema.names}; {framework} has {default_out.names}"
        )
    for item in output_schema:
        expected = default_out.field(item.name).type
        if not _compatible(item.type, expected):
            raise ModelLoadError(
                f"output_schema field {item.name!r} is {item.type}; {framework} has {expected}"
            )
    if "images" in output_schema.names and image_shape(output_schema.field("images").type) is None:
        raise ModelLoadError(
            "output_schema field 'images' must be an int64 image of a fixed (height, width, 3) shape"
        )


def _task_name(framework: str) -> str:
    task = framework.removeprefix(PREFIX)
    if task not in TASKS:
        raise ModelLoadError(f"the hf runtime serves the hugging-face-<task> frameworks, not {framework!r}")
    return task


# -- loading ----------------------------------------------------------------------------------------


def pipeline_folder(artifact: Path) -> Path:
    """The save_pretrained folder: the unpacked archive itself, or its one folder."""
    if not artifact.is_dir():
        raise ModelLoadError("a Hugging Face model is a zip of a pipeline's save_pretrained folder")
    markers = ("config.json", _DIFFUSION_INDEX)
    if any((artifact / marker).is_file() for marker in markers):
        return artifact
    children = [child for child in artifact.iterdir() if not child.name.startswith((".", "__MACOSX"))]
    if len(children) == 1 and children[0].is_dir() and any((children[0] / m).is_file() for m in markers):
        return children[0]
    raise ModelLoadError(
        "the archive has no config.json (model_index.json for stable diffusion): it must hold a "
        "pipeline's save_pretrained folder"
    )


def _check_files(folder: Path, task_name: str, task: Task) -> None:
    """Each file the task needs, named when missing (rather than a library's message with our paths)."""
    if task_name == "stable-diffusion-text-2-img":
        _check_diffusion(folder)
        return
    if not (folder / "config.json").is_file():
        raise ModelLoadError("the archive has no config.json")
    if not any((folder / name).is_file() for name in _WEIGHTS):
        raise ModelLoadError(f"the archive has no model weights: none of {', '.join(_WEIGHTS)}")
    for name in task.files:
        if not (folder / name).is_file():
            raise ModelLoadError(f"the archive has no {name}, which {PREFIX}{task_name} needs")


def _check_diffusion(folder: Path) -> None:
    import json

    index = folder / _DIFFUSION_INDEX
    if not index.is_file():
        raise ModelLoadError(
            f"the archive has no {_DIFFUSION_INDEX} (a diffusers pipeline's save_pretrained)"
        )
    try:
        components = json.loads(index.read_text())
    except ValueError:
        raise ModelLoadError(f"{_DIFFUSION_INDEX} is not JSON") from None
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ModelLoadError(f"the archive has no {name}/ folder, which {_DIFFUSION_INDEX} names")


def _library_error(error: Exception, folder: Path) -> ModelLoadError:
    """A library's load failure in our words: its message without our paths."""
    text = " ".join(str(error).split()).replace(str(folder), "<archive>")
    return ModelLoadError(f"the pipeline cannot be loaded: {type(error).__name__}: {text[:300]}")


def load_pipeline(folder: Path, task_name: str) -> Any:
    if task_name == "stable-diffusion-text-2-img":
        diffusers = importlib.import_module("diffusers")
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    transformers = importlib.import_module("transformers")
    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline(task_name, model=str(folder), device="cpu", trust_remote_code=False)
    tokenizer = getattr(pipe, "tokenizer", None)
    if task_name == "text-generation" and tokenizer is not None:
        # Batched generation of a decoder-only model pads on the left, with EOS when it has no pad
        # token: one call over N rows then answers each row as it would alone.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
    return pipe


# -- the runtime ------------------------------------------------------------------------------------


@dataclass
class _Group:
    rows: list[int] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


class HuggingFaceRuntime(Runtime):
    name: ClassVar[str] = "hf"

    def __init__(self, framework: str, pipe: Any, input_schema: pa.Schema, output_schema: pa.Schema) -> None:
        self.framework = framework
        self.task_name = _task_name(framework)
        self.task = TASKS[self.task_name]
        self.pipe = pipe
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.optional_inputs = frozenset(n for n in input_schema.names if n not in self.task.required)
        self._arguments = [n for n in input_schema.names if n not in self.task.required]
        self._sampling_rate = _sampling_rate(pipe)

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        task_name = _task_name(spec.framework)
        framework = get_framework(spec.framework)
        input_schema = spec.input_schema if spec.input_schema is not None and len(spec.input_schema) else None
        output_schema = (
            spec.output_schema if spec.output_schema is not None and len(spec.output_schema) else None
        )
        input_schema = input_schema or framework.default_input_schema
        output_schema = output_schema or framework.default_output_schema
        assert input_schema is not None and output_schema is not None
        check_schemas(spec.framework, input_schema, output_schema)
        folder = pipeline_folder(spec.artifact)
        _check_files(folder, task_name, TASKS[task_name])
        try:
            pipe = load_pipeline(folder, task_name)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise _library_error(error, folder) from error
        return cls(spec.framework, pipe, input_schema, output_schema)

    # -- inference --

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        items = self._items(batch)
        results: list[Any] = [None] * batch.num_rows
        for group in self._groups(batch):
            found = self._call(group, [items[i] for i in group.rows])
            for row, result in zip(group.rows, found, strict=True):
                results[row] = result
        return self._outputs(results)

    def warm_up(self) -> None:
        """One meaningful generated row through the model (torch's first call allocates and picks its
        kernels; a tokenizer needs real text). A failure is logged, not fatal (the base contract); the
        upload already ran the same row (`describe`)."""
        try:
            self.infer(self.example())
        except Exception as error:  # the model's own exception: logged here, never raised
            log.warning("warm-up of a %s model failed (it serves anyway): %s", self.framework, error)

    def example(self) -> pa.RecordBatch:
        """A meaningful one-row input for this task: text, a gradient image, a second of a tone."""
        columns = []
        for item in self.input_schema:
            if item.name in self.task.images:
                height, width = image_shape(item.type) or (0, 0)
                gradient = (
                    np.linspace(0, 255, height * width * 3).astype(np.int64).reshape(1, height, width, 3)
                )
                columns.append(_image_column(gradient, item.type))
            elif item.name in self.task.audio:
                rate = self._sampling_rate or 16000
                tone = (0.1 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
                columns.append(pa.array([tone], type=item.type))
            elif item.name == "candidate_labels":
                size = item.type.list_size if pt.is_fixed_size_list(item.type) else 2
                columns.append(pa.array([[f"label {i}" for i in range(size)]], type=item.type))
            elif item.name == "question":
                columns.append(pa.array(["What is served?"], type=item.type))
            elif item.name in self.task.required:
                text = "Flightline serves models over Arrow Flight. It warms them up first."
                columns.append(pa.array([text], type=item.type))
            elif item.name == "num_inference_steps":  # a diffusion pipeline's default is 50 steps
                columns.append(pa.array([1], type=item.type))
            else:
                columns.append(pa.nulls(1, item.type))
        return pa.RecordBatch.from_arrays(columns, schema=self.input_schema)

    def _items(self, batch: pa.RecordBatch) -> list[Any]:
        """What the pipeline gets per row for the task's required fields."""
        per_field: dict[str, list[Any]] = {}
        for name in self.task.required:
            column = batch.column(name)
            if name in self.task.images:
                per_field[name] = _pil_images(name, column)
            elif name in self.task.audio:
                per_field[name] = _waveforms(column)
            else:
                per_field[name] = column.to_pylist()
        if self.task_name == "question-answering":
            return [
                {"question": q, "context": c}
                for q, c in zip(per_field["question"], per_field["context"], strict=True)
            ]
        if self.task_name == "zero-shot-object-detection":
            return [
                {"image": image, "candidate_labels": labels}
                for image, labels in zip(per_field["images"], per_field["candidate_labels"], strict=True)
            ]
        return per_field[self.task.required[0]]

    def _groups(self, batch: pa.RecordBatch) -> list[_Group]:
        """Rows grouped by the arguments they set (nulls are left out: the pipeline's defaults)."""
        names = [*self.task.grouped, *self._arguments]
        values = [batch.column(name).to_pylist() for name in names]
        defaults = self._defaults()
        groups: dict[tuple[Any, ...], _Group] = {}
        for row in range(batch.num_rows):
            kwargs = dict(defaults)
            kwargs.update(
                (n, _argument(n, column[row]))
                for n, column in zip(names, values, strict=True)
                if column[row] is not None
            )
            self._check_limits(kwargs)
            key = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items()))
            groups.setdefault(key, _Group(kwargs=kwargs)).rows.append(row)
        return list(groups.values())

    def _defaults(self) -> dict[str, Any]:
        """Arguments the schema implies: a fixed list size of ranked outputs is their top_k, a fixed image
        size is a diffusion pipeline's height and width."""
        defaults: dict[str, Any] = {}
        for argument, output in self.task.limits:
            size = _list_size(self.output_schema.field(output).type)
            # None: every label (a variable-size list holds them all).
            defaults[argument] = size
        if self.task_name == "stable-diffusion-text-2-img":
            height, width = image_shape(self.output_schema.field("images").type) or (0, 0)
            defaults.update(height=height, width=width)
        return defaults

    def _check_limits(self, kwargs: dict[str, Any]) -> None:
        for argument, output in self.task.limits:
            size = _list_size(self.output_schema.field(output).type)
            if size is not None and kwargs.get(argument) != size:
                raise InvalidInput(
                    f"column '{argument}' is {kwargs.get(argument)}: the output schema's '{output}' holds "
                    f"{size} items per row (declare a variable-size list to vary it)"
                )
        if self.task_name == "stable-diffusion-text-2-img":
            height, width = image_shape(self.output_schema.field("images").type) or (0, 0)
            for name, size in (("height", height), ("width", width)):
                if kwargs.get(name) != size:
                    raise InvalidInput(
                        f"column '{name}' is {kwargs.get(name)}: the output schema's images are "
                        f"{height}x{width}"
                    )

    def _call(self, group: _Group, items: list[Any]) -> list[Any]:
        arguments = {k: v for k, v in group.kwargs.items() if k in self.input_schema.names}
        try:
            return self.task.call(self.pipe, items, dict(group.kwargs))
        except InvalidInput:
            raise
        except (ValueError, TypeError, KeyError) as error:
            # The model's message may hold anything: it is logged; the client is told which of its
            # arguments the model refused, when the message names one.
            message = str(error)
            named = [name for name in arguments if name in message]
            if not named:
                raise
            log.info("the model rejected argument(s) %s: %s", named, " ".join(message.split())[:500])
            listed = ", ".join(repr(name) for name in named)
            raise InvalidInput(
                f"the model rejected argument {listed} (an input column of this model)"
            ) from None

    def _outputs(self, results: list[Any]) -> pa.RecordBatch:
        values = self.task.outputs(results)
        columns = []
        for item in self.output_schema:
            columns.append(_column(item.name, values[item.name], item.type))
        return pa.RecordBatch.from_arrays(columns, schema=self.output_schema)


def _column(name: str, values: list[Any], data_type: pa.DataType) -> pa.Array:
    try:
        if values and isinstance(values[0], np.ndarray) and pt.is_fixed_size_list(data_type):
            stacked = np.stack(values)
            return (
                _image_column(stacked, data_type)
                if stacked.ndim == 4
                else pa.array(list(stacked), type=data_type)
            )
        if values and isinstance(values[0], np.ndarray):  # (tokens, hidden) per row: a list of vectors
            return _ragged_vectors(name, values, data_type)
        return pa.array(values, type=data_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise _Mismatch(
            f"the model's output '{name}' does not fit the output schema's {data_type}: {error}"
        ) from None


def _ragged_vectors(name: str, values: list[np.ndarray], data_type: pa.DataType) -> pa.Array:
    """Per row a (tokens, width) array as list<fixed_size_list<float64, width>>, without Python lists."""
    inner = data_type.value_type
    if pt.is_fixed_size_list(inner):
        width = values[0].shape[-1]
        if width != inner.list_size:
            raise _Mismatch(
                f"the model's output '{name}' has {width} values per token; the output schema says "
                f"{inner.list_size}"
            )
        flat = pa.array(np.concatenate([v.reshape(-1) for v in values]), type=inner.value_type)
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32))
        return pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(flat, width), type=data_type
        )
    return pa.array([v.tolist() for v in values], type=data_type)


def _image_column(pixels: np.ndarray, data_type: pa.DataType) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(pixels, dtype=np.int64).reshape(-1))
    height, width, channels = pixels.shape[1:]
    column = pa.FixedSizeListArray.from_arrays(flat, channels)
    column = pa.FixedSizeListArray.from_arrays(column, width)
    column = pa.FixedSizeListArray.from_arrays(column, height)
    return column.cast(data_type)


def _pil_images(name: str, column: pa.Array) -> list[Any]:
    image_module = importlib.import_module("PIL.Image")
    pixels = as_tensor(column)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise InvalidInput(f"column '{name}' holds values outside 0..255; images are RGB bytes")
    return [image_module.fromarray(image, mode="RGB") for image in pixels.astype(np.uint8)]


def _waveforms(column: pa.Array) -> list[np.ndarray]:
    """Per row the float32 samples, views into the column's values (no copy)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(column))]


def _sampling_rate(pipe: Any) -> int | None:
    extractor = getattr(pipe, "feature_extractor", None)
    rate = getattr(extractor, "sampling_rate", None)
    return int(rate) if isinstance(rate, int) else None


def _argument(name: str, value: Any) -> Any:
    """A column's value as the pipeline wants it: ASR's return_timestamps is a string in the seed's
    schema, "word"/"char" or a boolean spelled as text."""
    if name == "return_timestamps" and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", ""):
            return False
        return lowered
    return value


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _list_size(data_type: pa.DataType) -> int | None:
    return int(data_type.list_size) if pt.is_fixed_size_list(data_type) else None


# -- preparation --------------------------------------------------------------------------------------


def describe(
    path: Path, input_schema: pa.Schema | None, output_schema: pa.Schema | None, framework: str = ""
) -> tuple[pa.Schema, pa.Schema]:
    """At upload, in the hf environment: the schemas served (the given ones, else the task's), checked
    against the task, then against the model by one generated row whose outputs must fit them."""
    with unpacked(path) as root:  # the preparation gets the zip; runtime servers, the unpacked folder
        runtime = HuggingFaceRuntime.load(ModelSpec(root, framework, input_schema, output_schema))
        _check_with_a_generated_row(runtime)
    return runtime.input_schema, runtime.output_schema


def _check_with_a_generated_row(runtime: HuggingFaceRuntime) -> None:
    try:
        Host(runtime).run(runtime.example())  # the data rules, the call, the output schema's check
    except InvalidInput as error:
        raise ModelLoadError(f"the schemas do not fit the model: {error}") from None
    except ModelOutputError as error:
        raise ModelLoadError(str(error)) from None
    except Exception as error:  # the model's own failure: its type only, the rest is logged
        log.warning("a generated row failed at upload: %s", error, exc_info=True)
        raise ModelLoadError(f"the model failed on a generated row ({type(error).__name__})") from None
