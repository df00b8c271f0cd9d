"""A tiny ONNX multilayer perceptron built in-process, shared by the data-plane tests and benchmarks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_mlp(path: Path, sizes: tuple[int, ...] = (29, 32, 16, 2), *, seed: int = 7) -> Path:
    """Writes a float32 MLP (Gemm + Relu layers) with input `input` [N, sizes[0]] and output `output`."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight = rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, fan_out)).astype(np.float32)
        bias = rng.normal(0, 0.1, fan_out).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(sizes) - 2
        gemm_out = "output" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_adder(path: Path, constant: float, width: int = 4) -> Path:
    """Writes an ONNX model whose output `output` is its input `input` [N, width] plus `constant`: two
    versions with different constants answer distinguishably, so a client can check every answer."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "constant"], ["output"])],
        "adder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(np.full((1, width), constant, dtype=np.float32), "constant")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
