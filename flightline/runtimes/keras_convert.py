"""Keras uploads converted to ONNX with tf2onnx (opset 17 by default), each conversion verified against
the original on a generated batch. The tensorflow plug-in's converter; runs only in the preparation
subprocess, in the `tensorflow` family environment.

Forms, told apart by content, not by name: HDF5 (written by Keras 3 or by Keras 2, i.e. tf_keras, whose
`keras_version` attribute says which), the native `.keras` zip, and a SavedModel zip (Keras 2's
`model.save(dir)`, loadable again as a Keras model, or Keras 3's `export()`, a plain SavedModel).

Routes, tried in order until one converts and verifies: tf2onnx's `from_keras` (fails today on Keras 3
Sequential models), `from_function` on a tf.function around the model, and the SavedModel route (the
model exported as a SavedModel, converted from its `serving_default` signature). The result's note
says which route won and why the earlier ones did not. When none does, the model is served by the
TensorFlow runtime as a SavedModel (the upload itself, or the export written here)."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import pyarrow as pa

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.conversion import (
    CONVERTED_FILE,
    ConversionResult,
    InvalidConversionRequest,
    difference,
    first_line,
    rename_ports,
    target_opset,
)
from flightline.runtimes.rules import numpy_dtype, tensor_shape
from flightline.runtimes.tensorflow import SAVED_MODEL_FILE, SIGNATURE, leaf_type, saved_model_root

HDF5_MAGIC: Final = b"\x89HDF\r\n\x1a\n"
SAVED_MODEL_ZIP: Final = "saved_model.zip"
SAMPLE_ROWS: Final = 8
_KERAS2_METADATA: Final = "keras_metadata.pb"  # written by Keras 2's model.save(dir), not by export()


class _NotConverted(Exception):
    """One route failed; the message goes into the note."""


@dataclass
class KerasUpload:
    form: str  # what the upload is, for notes: "Keras 3 HDF5", "Keras 2 SavedModel", ...
    model: Any | None  # the Keras model (Keras 3 or tf_keras); None for a plain SavedModel
    saved_model: Path | None  # the SavedModel folder, when the upload is one

    def signature(self) -> Any:
        import tensorflow as tf

        assert self.saved_model is not None
        return tf.saved_model.load(str(self.saved_model)).signatures[SIGNATURE]


def load(artifact: Path) -> KerasUpload:
    """The upload's form, loaded; ModelLoadError when it is none of the Keras forms or is broken."""
    if not artifact.is_file():
        raise ModelLoadError(f"model file {artifact.name} does not exist")
    with artifact.open("rb") as file:
        head = file.read(8)
    if head == HDF5_MAGIC:
        return _load_hdf5(artifact)
    if zipfile.is_zipfile(artifact):
        with zipfile.ZipFile(artifact) as archive:
            names = {Path(name).name for name in archive.namelist()}
        if SAVED_MODEL_FILE in names:
            return _load_saved_model(artifact)
        if "config.json" in names:
            return _load_keras_zip(artifact)
    raise ModelLoadError(
        "not a Keras model: expected an HDF5 file (.h5), a .keras file or a SavedModel folder as .zip"
    )


def _load_hdf5(path: Path) -> KerasUpload:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            version = file.attrs.get("keras_version", b"")
    except OSError as error:  # a truncated or corrupt file
        raise ModelLoadError(
            f"not a readable HDF5 file (truncated or corrupt?): {first_line(error)}"
        ) from None
    version = version.decode() if isinstance(version, bytes) else str(version)
    if not version:
        raise ModelLoadError("the HDF5 file holds no Keras model (no keras_version attribute)")
    legacy = not version.startswith("3")
    try:
        if legacy:
            import tf_keras

            model = tf_keras.models.load_model(path, compile=False)
        else:
            import keras

            model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises anything on a bad file (OSError, ValueError, KeyError...)
        raise ModelLoadError(f"not a loadable Keras {version} HDF5 model: {first_line(error)}") from None
    return KerasUpload(f"Keras {version[0]} HDF5", model, None)


def _load_keras_zip(path: Path) -> KerasUpload:
    import keras

    named = path
    if path.suffix != ".keras":  # Keras refuses any other name
        named = Path(tempfile.mkdtemp(prefix="keras-")) / "model.keras"
        shutil.copyfile(path, named)
    try:
        model = keras.saving.load_model(named, compile=False)  # safe_mode: no Lambda layer code
    except Exception as error:
        raise ModelLoadError(f"not a loadable .keras model: {first_line(error)}") from None
    return KerasUpload("Keras 3 .keras", model, None)


def _load_saved_model(path: Path) -> KerasUpload:
    root = saved_model_root(path)
    if (root / _KERAS2_METADATA).is_file():
        import tf_keras

        try:
            model = tf_keras.models.load_model(root, compile=False)
            return KerasUpload("Keras 2 SavedModel", model, root)
        except Exception:  # a Keras 2 SavedModel of custom layers: still a SavedModel for the other routes
            pass
    return KerasUpload("SavedModel", None, root)


# -- inputs and the original -------------------------------------------------------------------------


@dataclass(frozen=True)
class Io:
    """The served inputs (name, dtype, per-row shape) and output names, in the model's order."""

    inputs: list[tuple[str, Any, tuple[int, ...]]]
    outputs: list[str]

    def specs(self) -> list[Any]:
        import tensorflow as tf

        return [tf.TensorSpec((None, *shape), dtype, name=name) for name, dtype, shape in self.inputs]


def _io(upload: KerasUpload, input_schema: pa.Schema | None, output_schema: pa.Schema | None) -> Io:
    import tensorflow as tf

    if upload.model is not None:
        model_inputs = [
            (t.name.split(":")[0], tf.as_dtype(t.dtype), tuple(t.shape)) for t in upload.model.inputs
        ]
        count = len(upload.model.outputs)
    else:
        function = upload.signature()
        specs = sorted(function.structured_input_signature[1].items())
        model_inputs = [(name, s.dtype, tuple(s.shape.as_list())) for name, s in specs]
        count = len(function.structured_outputs)
    if input_schema is not None and len(input_schema):
        if len(input_schema) != len(model_inputs):
            raise InvalidConversionRequest(
                f"the input schema has {len(input_schema)} columns {input_schema.names}, "
                f"the model {len(model_inputs)} inputs"
            )
        inputs = []
        for field, (_, dtype, shape) in zip(input_schema, model_inputs, strict=True):
            leaf, per_row = tensor_shape(field.type)
            if not leaf_type(dtype).equals(leaf) or not _fits(shape[1:], per_row):
                raise InvalidConversionRequest(
                    f"input schema column {field.name!r} is {field.type}, the model's input is "
                    f"{dtype.name} of per-row shape {list(shape[1:])}"
                )
            inputs.append((field.name, dtype, per_row))
    else:
        inputs = []
        for name, dtype, shape in model_inputs:
            if any(d is None for d in shape[1:]):
                raise InvalidConversionRequest(
                    f"input {name!r} has a dynamic per-row shape {list(shape[1:])}: give an input schema"
                )
            inputs.append((name, dtype, tuple(int(d) for d in shape[1:])))
    if output_schema is not None and len(output_schema):
        if len(output_schema) != count:
            raise InvalidConversionRequest(
                f"the output schema has {len(output_schema)} columns, the model {count} outputs"
            )
        outputs = list(output_schema.names)
    elif upload.model is None:
        outputs = sorted(upload.signature().structured_outputs)
    else:
        outputs = [f"output_{i}" for i in range(count)]  # Keras 3 export()'s names
    return Io(inputs, outputs)


def _fits(dims: Sequence[int | None], shape: tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(d is None or d == s for d, s in zip(dims, shape, strict=True))


def _sample(io: Io) -> list[np.ndarray]:
    """A generated batch: normal floats, small integers, short strings."""
    rng = np.random.default_rng(0)
    batch = []
    for _, dtype, shape in io.inputs:
        leaf = leaf_type(dtype)
        full = (SAMPLE_ROWS, *shape)
        if pa.types.is_floating(leaf):
            batch.append(rng.normal(size=full).astype(numpy_dtype(leaf)))
        elif pa.types.is_integer(leaf) or pa.types.is_boolean(leaf):
            batch.append(rng.integers(0, 2, size=full).astype(numpy_dtype(leaf)))
        else:
            batch.append(
                np.array([f"row {i}" for i in range(int(np.prod(full)))], dtype=object).reshape(full)
            )
    return batch


def _original(upload: KerasUpload, io: Io) -> Callable[..., list[Any]]:
    """The model as a function of positional tensors returning its flattened outputs (tf.nest order)."""
    import tensorflow as tf

    if upload.model is not None:
        model = upload.model

        def keras_call(*tensors: Any) -> list[Any]:
            result = model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)
            return list(tf.nest.flatten(result))

        return keras_call
    function = upload.signature()
    names = [name for name, _ in sorted(function.structured_input_signature[1].items())]

    def signature_call(*tensors: Any) -> list[Any]:
        return list(tf.nest.flatten(function(**dict(zip(names, tensors, strict=True)))))

    return signature_call


# -- routes -------------------------------------------------------------------------------------------


def _from_keras(upload: KerasUpload, io: Io, opset: int, export: Path) -> onnx.ModelProto:
    import tf2onnx

    if upload.model is None:
        raise _NotConverted(f"a plain {upload.form} holds no Keras model")
    model: onnx.ModelProto = tf2onnx.convert.from_keras(
        upload.model, input_signature=io.specs(), opset=opset
    )[0]
    return model


def _from_function(upload: KerasUpload, io: Io, opset: int, export: Path) -> onnx.ModelProto:
    import tensorflow as tf
    import tf2onnx

    call = _original(upload, io)
    function = tf.function(lambda *tensors: call(*tensors))
    model: onnx.ModelProto = tf2onnx.convert.from_function(function, input_signature=io.specs(), opset=opset)[
        0
    ]
    return model


def _from_saved_model(upload: KerasUpload, io: Io, opset: int, export: Path) -> onnx.ModelProto:
    from tf2onnx import convert, tf_loader

    folder = upload.saved_model or _export(upload, io, export)
    graph, inputs, outputs, renames = tf_loader.from_saved_model(
        str(folder), None, None, signatures=[SIGNATURE], return_tensors_to_rename=True
    )
    model, _ = convert._convert_common(  # what tf2onnx's command line runs for --saved-model
        graph,
        name=SIGNATURE,
        opset=opset,
        input_names=inputs,
        output_names=outputs,
        tensors_to_rename=renames,
    )
    if upload.saved_model is None:  # exported here: its ports carry the served names
        return _ordered_ports(model, [name for name, _, _ in io.inputs], io.outputs)
    # An uploaded signature's ports in name order, the order `_original` takes and flattens them in.
    return _ordered_ports(model, sorted(v.name for v in model.graph.input), sorted(outputs_of(model)))


def outputs_of(model: onnx.ModelProto) -> list[str]:
    return [v.name for v in model.graph.output]


def _ordered_ports(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    graph = model.graph
    for values, order in ((graph.input, inputs), (graph.output, outputs)):
        rank = {name: index for index, name in enumerate(order)}
        ordered = sorted(values, key=lambda v: rank.get(v.name, len(rank)))
        copies = [type(v)() for v in ordered]
        for copy, value in zip(copies, ordered, strict=True):
            copy.CopyFrom(value)
        del values[:]
        values.extend(copies)
    return model


def _export(upload: KerasUpload, io: Io, export: Path) -> Path:
    """The Keras model written as a SavedModel whose serving_default signature takes the served inputs."""
    import tensorflow as tf

    if export.exists():
        return export
    call = _original(upload, io)
    outputs = io.outputs

    class Exported(tf.Module):  # type: ignore[misc]
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model  # tracked: its variables are saved with the module

        @tf.function(input_signature=io.specs())  # type: ignore[untyped-decorator]
        def serve(self, *tensors: Any) -> dict[str, Any]:
            return dict(zip(outputs, call(*tensors), strict=True))

    module = Exported(upload.model)
    try:
        tf.saved_model.save(module, str(export), signatures={SIGNATURE: module.serve})
    except Exception as error:
        shutil.rmtree(export, ignore_errors=True)
        raise _NotConverted(f"exporting a SavedModel failed: {first_line(error)}") from error
    return export


ROUTES: Final = (
    ("from_keras", _from_keras),
    ("tf.function", _from_function),
    ("SavedModel", _from_saved_model),
)


def _verify(model: onnx.ModelProto, io: Io, sample: list[np.ndarray], want: list[np.ndarray]) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {name: values for (name, _, _), values in zip(io.inputs, sample, strict=True)}
        got = session.run(io.outputs, feeds)
    except Exception as error:
        raise _NotConverted(f"onnxruntime cannot run the result: {first_line(error)}") from error
    for name, expected, have in zip(io.outputs, want, got, strict=True):
        problem = difference(expected, np.asarray(have))
        if problem:
            raise _NotConverted(f"the ONNX model disagrees with Keras on a generated batch: {name} {problem}")


def convert(
    framework: str,
    artifact: Path,
    out_dir: Path,
    *,
    input_schema: pa.Schema | None = None,
    output_schema: pa.Schema | None = None,
    options: Mapping[str, str] | None = None,
) -> ConversionResult:
    """Raises ModelLoadError (not a loadable Keras model) and InvalidConversionRequest (schemas, options)."""
    opset = target_opset(options or {})
    upload = load(artifact)
    io = _io(upload, input_schema, output_schema)
    sample = _sample(io)
    want = [np.asarray(t) for t in _original(upload, io)(*sample)]
    if len(want) != len(io.outputs):
        raise ModelLoadError(f"the model returned {len(want)} outputs, expected {len(io.outputs)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    export = Path(tempfile.mkdtemp(prefix="export-")) / "saved_model"
    failures: list[str] = []
    for route, run in ROUTES:
        try:
            try:
                model = run(upload, io, opset, export)
            except _NotConverted:
                raise
            except Exception as error:  # tf2onnx fails in many ways; each is a reason to try the next
                raise _NotConverted(f"{type(error).__name__}: {first_line(error)}") from error
            rename_ports(model, [name for name, _, _ in io.inputs], io.outputs)
            _verify(model, io, sample, want)
        except _NotConverted as failed:
            failures.append(f"{route}: {failed}")
            continue
        onnx.save_model(model, out_dir / CONVERTED_FILE)
        why = f" ({'; '.join(failures)})" if failures else ""
        return ConversionResult(
            out_dir / CONVERTED_FILE,
            f"{upload.form} converted by tf2onnx's {route} route, opset {opset}{why}",
        )
    note = f"{upload.form} not converted to ONNX ({'; '.join(failures)}): served by the TensorFlow runtime"
    if upload.saved_model is not None:
        return ConversionResult(None, note)
    try:
        folder = _export(upload, io, export)
    except _NotConverted as failed:
        raise ModelLoadError(f"{note}, but {failed}") from None
    return ConversionResult(None, note, _zip(folder, out_dir / SAVED_MODEL_ZIP))


def _zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(folder))
    return dest


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
