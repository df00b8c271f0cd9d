"""Builds the framework-family bench models and times them in-process, run by a family environment's
interpreter (the bench's own venv has neither TensorFlow nor torch):

    python bench/family_models.py tensorflow|torch OUT_DIR SIZES

The same MLP as model A (29-32-16-2, random weights from a fixed seed) in each framework: for
`tensorflow` a tf.Module SavedModel zip (served natively) and a Keras `.keras` file (converted to ONNX);
for `torch` a scripted TorchScript module in float32 (converted) and in float64 (the float32 rule keeps
it on the TorchScript runtime). Prints one JSON object: {model key: {rows: in-process rows/s}}, each
timed like bench/measure.py (warm-up, then ~1 s of calls on the same batch), with one intra-op and one
inter-op thread: what Flightline's runtimes pick for a model this small (and, on a busy 2-core
machine, far faster for torch than its default of one thread per core)."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WIDTH = 29
LAYERS = (29, 32, 16, 2)


def _weights(dtype: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [
        (rng.normal(scale=0.3, size=(a, b)).astype(dtype), rng.normal(scale=0.1, size=b).astype(dtype))
        for a, b in itertools.pairwise(LAYERS)
    ]


def rows_per_s(call: Callable[[np.ndarray], object], batch: np.ndarray) -> float:
    call(batch)
    for _ in range(3):
        call(batch)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < 1.0:
        call(batch)
        count += 1
    return len(batch) * count / (time.perf_counter() - start)


def tensorflow(out: Path, sizes: list[int]) -> dict[str, dict[int, float]]:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    weights = _weights(np.float32)

    class Mlp(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layers = [(tf.Variable(w), tf.Variable(b)) for w, b in weights]

        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32, name="inputs")])  # type: ignore[untyped-decorator]
        def serve(self, inputs: Any) -> dict[str, Any]:
            x = inputs
            for i, (w, b) in enumerate(self.layers):
                x = tf.matmul(x, w) + b
                x = tf.nn.relu(x) if i < len(self.layers) - 1 else tf.nn.softmax(x)
            return {"probabilities": x}

    module = Mlp()
    folder = out / "tf_savedmodel"
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    with zipfile.ZipFile(out / "tf.zip", "w") as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, Path("tf") / file.relative_to(folder))
    model = keras.Sequential(
        [keras.Input((WIDTH,))]
        + [keras.layers.Dense(b, activation="relu") for b in LAYERS[1:-1]]
        + [keras.layers.Dense(LAYERS[-1], activation="softmax")]
    )
    for layer, (w, b) in zip(model.layers, weights, strict=True):
        layer.set_weights([w, b])
    model.save(out / "keras.keras")
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    result: dict[str, dict[int, float]] = {"TF": {}, "K": {}}
    for rows in sizes:
        batch = np.random.default_rng(rows).normal(size=(rows, WIDTH)).astype(np.float32)
        result["TF"][rows] = rows_per_s(lambda x: signature(inputs=x)["probabilities"].numpy(), batch)
        result["K"][rows] = rows_per_s(lambda x: model(x, training=False).numpy(), batch)
    return result


def torch_models(out: Path, sizes: list[int]) -> dict[str, dict[int, float]]:
    import torch

    torch.set_num_interop_threads(1)
    torch.set_num_threads(1)

    def mlp(dtype: Any) -> Any:
        layers: list[torch.nn.Module] = []
        for i, (w, b) in enumerate(_weights(dtype)):
            linear = torch.nn.Linear(*w.shape)
            linear.weight.data, linear.bias.data = torch.from_numpy(w.T.copy()), torch.from_numpy(b)
            layers += [linear, torch.nn.ReLU() if i < len(LAYERS) - 2 else torch.nn.Softmax(dim=1)]
        return torch.jit.script(torch.nn.Sequential(*layers).eval())

    result: dict[str, dict[int, float]] = {}
    for key, dtype in (("T32", np.float32), ("T64", np.float64)):
        module = mlp(dtype)
        torch.jit.save(module, str(out / f"{key}.pt"))
        result[key] = {}
        for rows in sizes:
            batch = np.random.default_rng(rows).normal(size=(rows, WIDTH)).astype(dtype)

            def call(x: np.ndarray, module: Any = module) -> object:
                with torch.inference_mode():
                    return module(torch.from_numpy(x)).numpy()

            result[key][rows] = rows_per_s(call, batch)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    family, target, sizes = sys.argv[1], Path(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    target.mkdir(parents=True, exist_ok=True)
    figures = tensorflow(target, sizes) if family == "tensorflow" else torch_models(target, sizes)
    print(json.dumps(figures))
