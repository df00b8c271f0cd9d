"""What every converter to ONNX shares (the sklearn, Keras and TorchScript converters): the result it
returns, the opset option, renaming a graph's tensors to the served column names and the comparison of
a conversion with its original. Imports only onnx and numpy, so every family's environment has it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

DEFAULT_TARGET_OPSET = 17  # the vendor guide's DEFAULT_OPSET_NUMBER for converted models
CONVERTED_FILE = "model.onnx"


@dataclass(frozen=True)
class ConversionResult:
    onnx_path: Path | None  # set when converted
    # Which route converted it and why earlier ones did not, or why it was not converted at all; "" when
    # there is nothing to say (a first route that worked, or a framework that does not convert).
    note: str
    # Not converted, but served from this file rather than the upload (e.g. a Keras .h5 exported to a
    # SavedModel zip for the TensorFlow runtime); None: the upload itself.
    served_path: Path | None = None


class InvalidConversionRequest(ValueError):
    """The schemas or options of the request do not fit the model; the caller should fix the request."""


def target_opset(options: Mapping[str, str]) -> int:
    raw = options.get("target_opset", str(DEFAULT_TARGET_OPSET))
    try:
        opset = int(raw)
    except ValueError:
        raise InvalidConversionRequest(f"option target_opset must be an integer, got {raw!r}") from None
    if not 9 <= opset <= onnx.defs.onnx_opset_version():
        raise InvalidConversionRequest(
            f"option target_opset must be between 9 and {onnx.defs.onnx_opset_version()}, got {opset}"
        )
    return opset


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Renames a tensor of the top-level graph (its inputs, outputs, nodes, initializers, value infos)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for values in (graph.initializer, graph.value_info, graph.input, graph.output):
        for value in values:
            if value.name == old:
                value.name = new


def rename_ports(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Gives the graph's inputs and outputs, in order, the served column names. Every name is first
    moved aside: a served name may already be another tensor's name inside the graph."""
    graph = model.graph
    ports = [*graph.input[: len(inputs)], *graph.output[: len(outputs)]]
    for index, value in enumerate(ports):
        rename_tensor(graph, value.name, f"{value.name}__port{index}")
    for name in [*inputs, *outputs]:
        rename_tensor(graph, name, f"{name}__inner")
    for value, name in zip(ports, [*inputs, *outputs], strict=True):
        rename_tensor(graph, value.name, name)


def difference(want: npt.NDArray[Any], have: npt.NDArray[Any]) -> str:
    """'' when the converted output matches: labels exactly, numbers within float32 error."""
    if want.size != have.size:
        return f"has shape {have.shape}, expected {want.shape}"
    want = want.reshape(have.shape)
    if want.dtype.kind not in "biuf" or have.dtype.kind not in "biuf":
        mismatched = int(np.count_nonzero(_text(want) != _text(have)))
        return f"differs in {mismatched} of {len(want)} rows" if mismatched else ""
    if want.dtype.kind in "biu":
        mismatched = int(np.count_nonzero(want != have))
        return f"differs in {mismatched} of {len(want)} rows" if mismatched else ""
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    if np.allclose(have, want, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
        return ""
    return f"differs by up to {float(np.max(np.abs(have - want))):.3g}"


def _text(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Strings and bytes (TensorFlow's strings) compared as text."""
    if values.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)])
    return values.astype(str).reshape(-1)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
