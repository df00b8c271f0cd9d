"""PyTorch TorchScript modules (`torch.jit.script` or `torch.jit.trace`, saved with `torch.jit.save`) on
torch (CPU). TorchScript records no input types or shapes, so the upload's input schema is required:
its columns are `forward`'s arguments, in order. Outputs (a tensor, a tuple or list of tensors, or a
dict of them) are found by running one generated row: named by the declared output schema, else
`output` for one tensor, `output_<i>` for a sequence and the keys of a dict.

The fallback of the pytorch framework, when the upload cannot be converted to ONNX; also the source of
the converter's (torch_convert.py) loading and sample batches. Runs only in the `torch` environment."""

from __future__ import annotations

import contextlib
import warnings
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
from flightline.runtimes.rules import as_tensor, from_tensor, is_open, numpy_dtype, tensor_shape

# Arrow buffers are read-only; torch only reads them (no in-place op on inputs), so its warning that
# the tensor shares a read-only array is noise on every request.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
NOT_TORCHSCRIPT: Final = (
    "not a TorchScript module: save the model with torch.jit.save(torch.jit.script(model), path) "
    "(or torch.jit.trace); a state_dict or a pickled nn.Module cannot be served"
)
# The profiling executor optimizes a graph after it has run with the same shapes this many times.
WARM_UP_CALLS: Final = 3
_threads_set = False


def _torch(spec: ModelSpec) -> Any:
    """torch with its thread pools sized once per process (base.default_intra_op_threads: one thread
    for a small model, the CPU share for a heavy one; inter-op: one thread, settable only before any
    parallel work)."""
    global _threads_set
    import torch

    if not _threads_set:
        torch.set_num_threads(
            thread_option(spec, "intra_op_threads", default_intra_op_threads(spec.artifact))
        )
        with contextlib.suppress(RuntimeError):  # parallel work already started in this process
            torch.set_num_interop_threads(thread_option(spec, "inter_op_threads", 1))
        _threads_set = True
    return torch


def load_module(spec: ModelSpec) -> Any:
    torch = _torch(spec)
    path = spec.artifact
    if not path.is_file():
        raise ModelLoadError(f"model file {path.name} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # RuntimeError from the zip reader for pickles, state_dicts, truncated files
        raise ModelLoadError(NOT_TORCHSCRIPT) from None
    module.eval()
    return module


def input_ports(schema: pa.Schema | None) -> list[Port]:
    if schema is None or is_open(schema):
        raise ModelLoadError(
            "TorchScript records no input types or shapes: give an input schema, one column per "
            "argument of forward(), e.g. fixed_size_list<float>[n]"
        )
    ports = []
    for field in schema:
        leaf, shape = tensor_shape(field.type)
        if numpy_dtype(leaf) == np.dtype(object):
            raise ModelLoadError(f"input schema column {field.name!r} is {field.type}; tensors are numeric")
        ports.append(Port(field.name, leaf, shape))
    return ports


def sample(ports: list[Port], rows: int, *, random: bool) -> list[np.ndarray]:
    """A generated batch: zeros, or normal floats and small integers."""
    rng = np.random.default_rng(0)
    batch = []
    for port in ports:
        dtype = numpy_dtype(port.leaf)
        full = (rows, *port.shape)
        if not random:
            batch.append(np.zeros(full, dtype=dtype))
        elif dtype.kind == "f":
            batch.append(rng.normal(size=full).astype(dtype))
        else:
            batch.append(rng.integers(0, 2, size=full).astype(dtype))
    return batch


def flatten(result: Any) -> dict[str, Any]:
    """A forward()'s result as named tensors, in order."""
    if isinstance(result, dict):
        return {str(key): value for key, value in result.items()}
    if isinstance(result, tuple | list):
        return {f"output_{i}": value for i, value in enumerate(result)}
    return {"output": result}


def call(module: Any, batch: list[np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        result = flatten(module(*(torch.from_numpy(values) for values in batch)))
    return {name: tensor.numpy() for name, tensor in result.items()}


def _output_ports(outputs: dict[str, np.ndarray]) -> list[Port]:
    ports = []
    for name, values in outputs.items():
        if values.ndim == 0:
            raise ModelLoadError(f"output {name!r} has no batch dimension (forward returned a scalar)")
        ports.append(Port(name, pa.from_numpy_dtype(values.dtype), tuple(values.shape[1:])))
    return ports


class TorchScriptRuntime(Runtime):
    name = "torchscript"

    def __init__(
        self, module: Any, output_names: list[str], input_schema: pa.Schema, output_schema: pa.Schema
    ):
        self._module = module
        self._output_names = output_names  # forward's result names, in output-column order
        self.input_schema = input_schema
        self.output_schema = output_schema

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        module = load_module(spec)
        ports = input_ports(spec.input_schema)
        try:
            probed = call(module, sample(ports, 1, random=False))
        except Exception as error:  # the module's own exception: wrong arity, shapes or dtypes
            raise ModelLoadError(
                f"forward() failed on one generated row of the input schema: {type(error).__name__}"
            ) from error
        outputs = served_ports("output", _output_ports(probed), spec.output_schema)
        input_schema = pa.schema([port_field("input", port.name, port) for port in ports])
        output_schema = pa.schema([port_field("output", name, port) for name, port in outputs])
        runtime = cls(module, [port.name for _, port in outputs], input_schema, output_schema)
        return runtime

    def warm_up(self) -> None:
        """TorchScript's profiling executor specializes the graph over its first calls: made here."""
        batch = sample(input_ports(self.input_schema), 1, random=False)
        for _ in range(WARM_UP_CALLS):
            call(self._module, batch)

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        results = call(self._module, [as_tensor(column) for column in batch.columns])
        arrays = [from_tensor(results[name]) for name in self._output_names]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema, pa.Schema]:
    """The schemas served for a TorchScript file and the declared ones (see `TorchScriptRuntime.load`)."""
    runtime = TorchScriptRuntime.load(ModelSpec(Path(path), "pytorch", input_schema, output_schema))
    return runtime.input_schema, runtime.output_schema
