"""TorchScript uploads converted to ONNX with `torch.onnx.export(..., dynamo=False)` (the TorchScript
exporter: the dynamo exporter refuses ScriptModules), opset 17 by default, verified against the module
on a generated batch. The torchscript plug-in's converter; runs only in the preparation subprocess, in
the `torch` environment. What it cannot convert is served by the TorchScript runtime, the note says why.

As the vendor guide says, only float32 inputs convert: a schema with other floats (float64) is served
by the TorchScript runtime."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa

from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.runtimes.conversion import (
    CONVERTED_FILE,
    ConversionResult,
    difference,
    first_line,
    target_opset,
)
from flightline.runtimes.torchscript import call, input_ports, load_module, sample

FALLBACK = "served by the TorchScript runtime"
SAMPLE_ROWS = 8


def convert(
    framework: str,
    artifact: Path,
    out_dir: Path,
    *,
    input_schema: pa.Schema | None = None,
    output_schema: pa.Schema | None = None,
    options: Mapping[str, str] | None = None,
) -> ConversionResult:
    """Raises ModelLoadError (not TorchScript, no input schema) and InvalidConversionRequest (options)."""
    opset = target_opset(options or {})
    spec = ModelSpec(artifact, framework, input_schema, output_schema, options or {})
    module = load_module(spec)
    ports = input_ports(input_schema)
    not_float32 = [p for p in ports if pa.types.is_floating(p.leaf) and not p.leaf.equals(pa.float32())]
    if not_float32:
        return ConversionResult(
            None,
            f"not converted to ONNX: for PyTorch input schemas the floats must be pyarrow.float32() "
            f"(input {not_float32[0].name!r} is {not_float32[0].leaf}); {FALLBACK}",
        )
    batch = sample(ports, SAMPLE_ROWS, random=True)
    try:
        want = call(module, batch)
    except Exception as error:
        raise ModelLoadError(
            f"forward() failed on a generated batch of the input schema: {type(error).__name__}"
        ) from error
    names = list(output_schema.names) if output_schema is not None and len(output_schema) else list(want)
    if len(names) != len(want):
        raise ModelLoadError(f"the output schema has {len(names)} columns, forward() returns {len(want)}")
    inputs = [p.name for p in ports]
    try:
        model = _export(module, batch, inputs, names, opset)
        _verify(model, inputs, batch, names, list(want.values()))
    except _NotConverted as failed:
        return ConversionResult(None, f"not converted to ONNX ({failed}); {FALLBACK}")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, out_dir / CONVERTED_FILE)
    note = f"converted by torch.onnx.export (TorchScript exporter, dynamo=False), opset {opset}"
    return ConversionResult(out_dir / CONVERTED_FILE, note)


class _NotConverted(Exception):
    pass


def _export(module: Any, batch: list[np.ndarray], inputs: list[str], outputs: list[str], opset: int) -> Any:
    import torch

    buffer = io.BytesIO()
    rows = {name: {0: "rows"} for name in [*inputs, *outputs]}
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(torch.from_numpy(values) for values in batch),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=rows,
            )
    except Exception as error:  # the exporter's UnsupportedOperatorError, SymbolicValueError, ...
        raise _NotConverted(
            f"torch.onnx.export failed: {type(error).__name__}: {first_line(error)}"
        ) from error
    return onnx.load_from_string(buffer.getvalue())


def _verify(
    model: Any, inputs: list[str], batch: list[np.ndarray], outputs: list[str], want: list[np.ndarray]
) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(outputs, dict(zip(inputs, batch, strict=True)))
    except Exception as error:
        raise _NotConverted(f"onnxruntime cannot run the export: {first_line(error)}") from error
    for name, expected, have in zip(outputs, want, got, strict=True):
        problem = difference(expected, np.asarray(have))
        if problem:
            raise _NotConverted(
                f"the ONNX export disagrees with TorchScript on a generated batch: {name} {problem}"
            )
