"""ONNX models on onnxruntime (CPU). Every input and output is a tensor whose first dimension is the batch;
the other dimensions must be fixed and become (nested) fixed-size-list columns, so a batch goes to the
session and back as numpy views of the Arrow buffers."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Self

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from flightline.runtimes.base import (
    ModelLoadError,
    ModelSpec,
    Runtime,
    artifact_file,
    default_intra_op_threads,
)
from flightline.runtimes.ports import Port, port_field, served_ports
from flightline.runtimes.rules import as_tensor, from_tensor, numpy_dtype

ONNX_TYPES: dict[str, pa.DataType] = {
    "tensor(float)": pa.float32(),
    "tensor(double)": pa.float64(),
    "tensor(float16)": pa.float16(),
    "tensor(int8)": pa.int8(),
    "tensor(int16)": pa.int16(),
    "tensor(int32)": pa.int32(),
    "tensor(int64)": pa.int64(),
    "tensor(uint8)": pa.uint8(),
    "tensor(uint16)": pa.uint16(),
    "tensor(uint32)": pa.uint32(),
    "tensor(uint64)": pa.uint64(),
    "tensor(bool)": pa.bool_(),
    "tensor(string)": pa.string(),
}

# onnxruntime prefixes messages with its build's source location and C++ signature; users need neither.
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+ (?:[^()]*\([^)]*\) )?")


def _ort_message(error: Exception, path: Path) -> str:
    """onnxruntime's message without its source locations, naming the file without the server's folders."""
    return _ORT_SOURCE.sub("", str(error)).replace(os.fspath(path), path.name)


def _ports(kind: str, args: list[ort.NodeArg]) -> list[Port]:
    ports = []
    for arg in args:
        leaf = ONNX_TYPES.get(arg.type)
        if leaf is None:
            hint = (
                " (for skl2onnx classifiers convert with options={'zipmap': False})"
                if "map" in arg.type
                else ""
            )
            raise ModelLoadError(f"{kind} '{arg.name}' has type {arg.type}; only tensors are supported{hint}")
        shape = arg.shape or []
        if not shape:
            raise ModelLoadError(
                f"{kind} '{arg.name}' has no batch dimension; its first dimension must be "
                "the (dynamic) number of rows"
            )
        if kind == "input" and isinstance(shape[0], int):
            raise ModelLoadError(
                f"input '{arg.name}' has a fixed batch dimension of {shape[0]}; export the "
                "model with a dynamic first dimension"
            )
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape[1:])
        ports.append(Port(arg.name, leaf, dims))
    return ports


def _zero_row(port: Port) -> np.ndarray:
    return np.zeros((1, *port.shape), dtype=numpy_dtype(port.leaf))


def _session_options(spec: ModelSpec, path: Path) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # base.default_intra_op_threads: one thread for small models, the CPU share for heavy ones;
    # `options["intra_op_threads"]` overrides it.
    options.intra_op_num_threads = int(spec.options.get("intra_op_threads", default_intra_op_threads(path)))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
    # Spinning workers would burn the core the Flight transport needs between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntime(Runtime):
    name = "onnx"

    def __init__(
        self,
        session: ort.InferenceSession,
        feeds: list[str],
        input_schema: pa.Schema,
        output_names: list[str],
        output_schema: pa.Schema,
    ) -> None:
        self._session = session
        self._feeds = feeds  # graph input name of each input_schema column, in order
        self._output_names = output_names
        self.input_schema = input_schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        path = artifact_file(spec.artifact, ".onnx", "model file")
        try:
            session = ort.InferenceSession(
                os.fspath(path), _session_options(spec, path), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own pybind types for every kind of bad file
            raise ModelLoadError(
                f"{path.name} is not a valid ONNX model: {_ort_message(error, path)}"
            ) from error
        inputs = _ports("input", session.get_inputs())
        outputs = _ports("output", session.get_outputs())

        pairs = served_ports("input", inputs, spec.input_schema)
        input_schema = pa.schema([port_field("input", name, port) for name, port in pairs])
        feeds = [port.name for _, port in pairs]
        out_pairs = served_ports("output", outputs, spec.output_schema)
        if not all(port.fixed for _, port in out_pairs):
            out_pairs = cls._probe_output_shapes(session, pairs, out_pairs, path)
        output_schema = pa.schema([port_field("output", name, port) for name, port in out_pairs])
        return cls(session, feeds, input_schema, [port.name for _, port in out_pairs], output_schema)

    @staticmethod
    def _probe_output_shapes(
        session: ort.InferenceSession,
        inputs: list[tuple[str, Port]],
        outputs: list[tuple[str, Port]],
        path: Path,
    ) -> list[tuple[str, Port]]:
        """Output shapes the graph leaves dynamic, found by running one row of zeros."""
        try:
            results = session.run([p.name for _, p in outputs], {p.name: _zero_row(p) for _, p in inputs})
        except Exception as error:
            raise ModelLoadError(
                "the model's output shapes are dynamic and a probe run failed "
                f"({_ort_message(error, path)}); declare the output schema"
            ) from error
        return [
            (name, Port(port.name, port.leaf, tuple(result.shape[1:])))
            for (name, port), result in zip(outputs, results, strict=True)
        ]

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        feeds = {name: as_tensor(column) for name, column in zip(self._feeds, batch.columns, strict=True)}
        results = self._session.run(self._output_names, feeds)
        return pa.RecordBatch.from_arrays([from_tensor(r) for r in results], schema=self.output_schema)


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema, pa.Schema]:
    """The (input, output) schemas the runtime will serve for an ONNX file and the schemas declared at
    upload, for the control plane to record. Raises ModelLoadError if they cannot be served."""
    runtime = OnnxRuntime.load(ModelSpec(Path(path), "onnx", input_schema, output_schema))
    return runtime.input_schema, runtime.output_schema
