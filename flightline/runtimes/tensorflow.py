"""TensorFlow SavedModels on TensorFlow (CPU), run by the `serving_default` signature: each signature
input is a column, each output a column, named as in the signature unless a declared schema renames
them (matched by name, else in order). The first dimension of every tensor is the batch; the others
must be fixed (or fixed by the declared schema). String tensors are Arrow strings.

The artifact is a SavedModel folder, unpacked from the uploaded zip (at its root or one folder down, as
`zip -r model.zip model/` makes it). This module runs only in the `tensorflow` family environment."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Final, Self

import numpy as np
import pyarrow as pa

from flightline.runtimes.base import (
    ModelLoadError,
    ModelSpec,
    Runtime,
    default_intra_op_threads,
    thread_option,
)
from flightline.runtimes.ports import Port, port_field, served_ports
from flightline.runtimes.rules import as_tensor, from_tensor, numpy_dtype, tensor_shape

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not our log

SIGNATURE: Final = "serving_default"
SAVED_MODEL_FILE: Final = "saved_model.pb"
_ZIP_HINT: Final = "zip the SavedModel folder, e.g. `zip -r model.zip model/`"
_configured_threads: tuple[int, int] | None = None


def _tf(spec: ModelSpec) -> Any:
    """tensorflow, its thread pools sized once per process, before the first op creates them: one
    thread for a small model, the process's CPU share for a heavy one (intra-op), one for independent
    ops (inter-op).
    A runtime server hosting several models shares them; the first model's options win."""
    global _configured_threads
    import tensorflow as tf

    if _configured_threads is None:
        intra = thread_option(spec, "intra_op_threads", default_intra_op_threads(spec.artifact))
        inter = thread_option(spec, "inter_op_threads", 1)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError:  # TensorFlow already initialized in this process (e.g. by a converter)
            pass
        _configured_threads = (intra, inter)
    return tf


def saved_model_root(artifact: Path) -> Path:
    """The SavedModel folder of an unpacked archive, or of a zip (extracted into a temporary folder);
    ModelLoadError saying how to zip it when there is none."""
    if artifact.is_file():
        if not zipfile.is_zipfile(artifact):
            raise ModelLoadError(f"a TensorFlow SavedModel is uploaded as a .zip; {_ZIP_HINT}")
        folder = Path(tempfile.mkdtemp(prefix="savedmodel-"))
        with zipfile.ZipFile(artifact) as archive:
            archive.extractall(folder)  # names were checked at upload; extractall also drops ".." parts
        artifact = folder
    if (artifact / SAVED_MODEL_FILE).is_file():
        return artifact
    found = [p.parent for p in artifact.glob(f"*/{SAVED_MODEL_FILE}") if not p.parent.name.startswith("__")]
    if len(found) != 1:
        where = "several folders" if found else "its root or one folder down"
        raise ModelLoadError(f"the archive holds no single {SAVED_MODEL_FILE} ({where}); {_ZIP_HINT}")
    return found[0]


def leaf_type(dtype: Any) -> pa.DataType:
    """The Arrow type of a TensorFlow dtype's values; ModelLoadError for kinds Arrow columns cannot hold."""
    if dtype.name == "string":
        return pa.string()
    try:
        return pa.from_numpy_dtype(np.dtype(dtype.as_numpy_dtype))
    except (TypeError, pa.ArrowNotImplementedError):
        raise ModelLoadError(f"tensors of type {dtype.name} are not supported") from None


def _ports(kind: str, specs: Any) -> list[Port]:
    ports = []
    for name, spec in sorted(specs.items()):  # tf.nest order: the order results are flattened in
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        if not shape:
            raise ModelLoadError(
                f"{kind} '{name}' has no batch dimension; its first dimension must be the number of rows"
            )
        if kind == "input" and shape[0] is not None:
            raise ModelLoadError(
                f"input '{name}' has a fixed batch dimension of {shape[0]}; export the signature with "
                "None as its first dimension"
            )
        ports.append(Port(name, leaf_type(spec.dtype), tuple(shape[1:])))
    return ports


def column(values: np.ndarray, port: Port) -> pa.Array:
    """The Arrow column of a result tensor: TensorFlow's strings are bytes, served as UTF-8 strings."""
    if not port.leaf.equals(pa.string()):
        return from_tensor(values)
    array = pa.array(values.reshape(-1), pa.binary()).cast(pa.string())
    for width in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, width)
    return array


def sample_row(schema: pa.Schema) -> pa.RecordBatch:
    """One generated row of `schema`: zeros, and non-empty strings (an empty string is no test of a
    text model: lookups and string ops may short-cut it)."""
    arrays = []
    for field in schema:
        leaf, shape = tensor_shape(field.type)
        values: np.ndarray
        if leaf.equals(pa.string()):
            values = np.full((1, *shape), "warm-up", dtype=object)
        else:
            values = np.zeros((1, *shape), dtype=numpy_dtype(leaf))
        arrays.append(column(values, Port(field.name, leaf, shape)))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class TensorflowRuntime(Runtime):
    name = "tensorflow"

    def __init__(
        self,
        model: Any,
        function: Any,
        feeds: list[str],
        outputs: list[tuple[str, Port]],
        input_schema: pa.Schema,
        output_schema: pa.Schema,
    ) -> None:
        self._model = model  # keeps the variables the signature reads alive
        self._function = function
        self._feeds = feeds  # signature argument of each input column, in order
        self._outputs = outputs  # (signature output, port) of each output column, in order
        self.input_schema = input_schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        tf = _tf(spec)
        root = saved_model_root(spec.artifact)
        try:
            model = tf.saved_model.load(str(root))
        except Exception as error:  # TensorFlow raises its own types for every kind of broken folder
            raise ModelLoadError(f"not a loadable SavedModel: {type(error).__name__}: {error}") from None
        function = getattr(model, "signatures", {}).get(SIGNATURE)
        if function is None:
            known = sorted(getattr(model, "signatures", {}))
            raise ModelLoadError(f"the SavedModel has no {SIGNATURE!r} signature (it has {known})")
        _, keywords = function.structured_input_signature
        inputs = served_ports("input", _ports("input", keywords), spec.input_schema)
        outputs = served_ports("output", _ports("output", function.structured_outputs), spec.output_schema)
        input_schema = pa.schema([port_field("input", name, port) for name, port in inputs])
        output_schema = pa.schema([port_field("output", name, port) for name, port in outputs])
        runtime = cls(
            model,
            function,
            [port.name for _, port in inputs],
            [(port.name, port) for _, port in outputs],
            input_schema,
            output_schema,
        )
        return runtime

    def warm_up(self) -> None:
        """The first call of a signature optimizes its graph (grappler): paid here, at load, on one
        generated row, not by the first request."""
        self.infer(sample_row(self.input_schema))

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        feeds = {name: as_tensor(col) for name, col in zip(self._feeds, batch.columns, strict=True)}
        results = self._function(**feeds)
        arrays = [column(results[name].numpy(), port) for name, port in self._outputs]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema, pa.Schema]:
    """The schemas served for a SavedModel zip and the declared ones (see `TensorflowRuntime.load`)."""
    runtime = TensorflowRuntime.load(ModelSpec(Path(path), "tensorflow", input_schema, output_schema))
    return runtime.input_schema, runtime.output_schema
