"""Tiny models built in-process for the runtime tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 29


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(
    path: Path,
    features: int = FEATURES,
    hidden: int = 8,
    seed: int = 0,
    batch: str | int = "N",
    features_dim: str | int | None = None,
) -> Path:
    """tensor [batch, features] float32 -> dense_1 [batch, 1] (sigmoid of a 2-layer MLP)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(size=(features, hidden)).astype(np.float32),
        "b1": rng.normal(size=(hidden,)).astype(np.float32),
        "w2": rng.normal(size=(hidden, 1)).astype(np.float32),
        "b2": rng.normal(size=(1,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["tensor", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Sigmoid", ["o1"], ["dense_1"]),
    ]
    width = features if features_dim is None else features_dim
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("tensor", TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, [batch, 1])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return _save(graph, path)


def cube(path: Path) -> Path:
    """images [N, 2, 3] float64 -> sums [N, 2] (sum over the last axis) and total [N] int64 (rounded sum)."""
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes")
    all_axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "all_axes")
    nodes = [
        helper.make_node("ReduceSum", ["images", "axes"], ["sums"], keepdims=0),
        helper.make_node("ReduceSum", ["sums", "all_axes"], ["total_f"], keepdims=0),
        helper.make_node("Round", ["total_f"], ["total_r"]),
        helper.make_node("Cast", ["total_r"], ["total"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "cube",
        [helper.make_tensor_value_info("images", TensorProto.DOUBLE, ["N", 2, 3])],
        [
            helper.make_tensor_value_info("sums", TensorProto.DOUBLE, ["N", 2]),
            helper.make_tensor_value_info("total", TensorProto.INT64, ["N"]),
        ],
        [axes, all_axes],
    )
    return _save(graph, path)


def dynamic_output(path: Path) -> Path:
    """x [N, 4] float32 -> y [N, ?] (identity, output shape left dynamic in the graph)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
    )
    return _save(graph, path)
