"""The two benchmark models, built here from a fixed seed (no downloads).

A, small: an sklearn MLPClassifier 29-32-16-2 (29 float inputs, like the seed's credit-card fraud
example), converted with skl2onnx; its pickle is what MLServer and `mlflow models serve` run, so all
paths compute the same function. B, compute-heavy: an MLP 256-512-512-512-1 written with
onnx.helper, random weights."""

from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20240601
MAX_ROWS = 100_000
OPSET = 17


@dataclass(frozen=True)
class BenchModel:
    key: str  # "A" or "B"
    description: str
    onnx_path: Path
    input_name: str
    width: int  # floats per row
    primary_output: str  # the output the checks compare
    sklearn_pickle: Path | None = None  # model A only: the sklearn estimator the ONNX came from

    def inputs(self, rows: int) -> np.ndarray:
        """The first `rows` rows of the model's fixed input data, C-contiguous float32 (rows, width)."""
        return _input_data(self.width)[:rows]


_DATA_CACHE: dict[int, np.ndarray] = {}


def _input_data(width: int) -> np.ndarray:
    if width not in _DATA_CACHE:
        rng = np.random.default_rng(SEED + width)
        _DATA_CACHE[width] = rng.standard_normal((MAX_ROWS, width), dtype=np.float32)
    return _DATA_CACHE[width]


def build_model_a(folder: Path) -> BenchModel:
    """Trains a small MLPClassifier on synthetic data and converts it to ONNX (probabilities, no zipmap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    features, labels = make_classification(
        n_samples=4000, n_features=29, n_informative=12, weights=[0.8], random_state=SEED
    )
    classifier = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=150, random_state=SEED)
    classifier.fit(features.astype(np.float32), labels)
    onnx_model = convert_sklearn(
        classifier,
        initial_types=[("tensor", FloatTensorType([None, 29]))],
        options={id(classifier): {"zipmap": False}},
        target_opset=OPSET,
    )
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model-a.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())
    pickle_path = folder / "model-a.pkl"
    pickle_path.write_bytes(pickle.dumps(classifier))
    return BenchModel(
        "A", "MLP 29-32-16-2 (sklearn -> skl2onnx)", onnx_path, "tensor", 29, "probabilities", pickle_path
    )


def build_model_b(folder: Path) -> BenchModel:
    """An MLP 256-512-512-512-1 of Gemm+Relu layers with He-initialised random weights."""
    rng = np.random.default_rng(SEED)
    widths = [256, 512, 512, 512, 1]
    nodes, initializers = [], []
    current = "input"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{layer}"),
            numpy_helper.from_array(bias, f"b{layer}"),
        ]
        last = layer == len(widths) - 2
        gemm_out = "output" if last else f"gemm{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{layer}"]))
            current = f"relu{layer}"
    graph = helper.make_graph(
        nodes,
        "mlp_b",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model-b.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    return BenchModel("B", "MLP 256-512-512-512-1 (onnx.helper)", onnx_path, "input", 256, "output")


def build_models(folder: Path, keys: str = "AB") -> list[BenchModel]:
    builders = {"A": build_model_a, "B": build_model_b}
    return [builders[key](folder) for key in keys]


# A Python step whose per-call cost dominates: a fixed sort (a few ms, independent of the rows) stands
# for the per-call overhead of a model that batching amortises; its answer per row is exact to check.
PYTHON_STEP = """
import numpy as np
import pandas as pd

_WORK = np.random.default_rng(7).standard_normal(60_000)


def wallaroo_json(data: pd.DataFrame) -> pd.DataFrame:
    np.sort(_WORK)  # the fixed per-call cost
    rows = np.stack(data["inputs"].to_numpy())
    return pd.DataFrame({"score": rows.sum(axis=1, dtype=np.float64)})
"""
STEP_WIDTH = 29


def python_step_score(inputs: np.ndarray) -> np.ndarray:
    """What the Python step answers for `inputs`: the float64 sum of each row."""
    scores: np.ndarray = inputs.sum(axis=1, dtype=np.float64)
    return scores


def build_python_step(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fixed_cost_step.py"
    path.write_text(PYTHON_STEP)
    return path


def build_kernel_ridge(folder: Path, index: int) -> Path:
    """A distinct sklearn KernelRidge pickle (skl2onnx has no converter for it, so Flightline serves the
    pickle in its sklearn runtime): each index trains on other data, so every upload is another model."""
    from sklearn.kernel_ridge import KernelRidge

    rng = np.random.default_rng(SEED + index)
    features = rng.standard_normal((300, 6))
    model = KernelRidge().fit(features, features[:, 0] + features[:, 1] > 0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kernel-ridge-{index}.pkl"
    path.write_bytes(pickle.dumps(model))
    return path
