"""Builds the TensorFlow and Keras test models, run by the tensorflow family's interpreter (the test venv
has no tensorflow): `python tf_models.py OUT_DIR`. Writes every artifact form into OUT_DIR, and for each
the rows it was run on and what TensorFlow itself answered in-process (Arrow IPC files `<name>.in.arrow`
and `<name>.out.arrow`), for the tests to compare with what Flightline serves.

Keras 2 (tf_keras) forms are written by a second run with TF_USE_LEGACY_KERAS=1 (`--legacy`): the
choice between Keras 3 and 2 is made once per process, when tensorflow is first imported."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

ROWS = 16
FEATURES = 8


def _save_rows(out: Path, name: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    for suffix, columns in (("in", inputs), ("out", outputs)):
        arrays = {}
        for column, values in columns.items():
            array = pa.array(
                values.reshape(-1).tolist() if values.dtype.kind in "OSU" else values.reshape(-1)
            )
            if array.type == pa.binary():
                array = array.cast(pa.string())
            for width in reversed(values.shape[1:]):
                array = pa.FixedSizeListArray.from_arrays(array, width)
            arrays[column] = array
        table = pa.table(arrays)
        with (
            pa.OSFile(str(out / f"{name}.{suffix}.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as w,
        ):
            w.write_table(table)


def _zip(folder: Path, dest: Path) -> None:
    """As `zip -r dest folder/` makes it: the SavedModel folder one level down."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, Path(folder.name) / file.relative_to(folder))
    shutil.rmtree(folder)


def _rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(ROWS, FEATURES)).astype(np.float32)


def keras3(out: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    x = _rows()
    y = model(x).numpy()
    model.save(out / "keras3.h5")
    model.save(out / "keras3.keras")
    model.export(out / "keras3_export")
    _zip(out / "keras3_export", out / "keras3_export.zip")
    for name in ("keras3_h5", "keras3_keras", "keras3_export"):
        _save_rows(out, name, {"inputs": x}, {"output_0": y})

    # A Keras model tf2onnx cannot convert (no ONNX op for StringToHashBucketFast): served by the
    # TensorFlow runtime from the SavedModel the preparation exports.
    text = keras.Input((), dtype="string")
    hashing = keras.Model(text, keras.layers.Hashing(num_bins=16)(text))
    hashing.save(out / "keras3_hashing.keras")
    words = np.array([f"word {i % 5}" for i in range(ROWS)], dtype=object)
    _save_rows(out, "keras3_hashing", {"text": words}, {"output_0": hashing(words).numpy()})

    # A tf.Module SavedModel with two inputs, one of them strings, and two outputs.
    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((FEATURES, 2), seed=(1, 2)))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, FEATURES], tf.float32, name="features"),
                tf.TensorSpec([None], tf.string, name="label"),
            ]
        )
        def serve(self, features: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
            length = tf.cast(tf.strings.length(label), tf.float32)
            return {
                "score": tf.matmul(features, self.w) + length[:, None],
                "shout": tf.strings.upper(label),
            }

    scorer = Scorer()
    tf.saved_model.save(scorer, str(out / "module"), signatures={"serving_default": scorer.serve})
    _zip(out / "module", out / "module.zip")
    labels = np.array([f"row-{i}" * (i % 3) for i in range(ROWS)], dtype=object)
    result = scorer.serve(tf.constant(x), tf.constant(labels))
    _save_rows(
        out,
        "module",
        {"features": x, "label": labels},
        {"score": result["score"].numpy(), "shout": result["shout"].numpy().astype(object)},
    )


def keras2(out: Path) -> None:
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [tf_keras.Input((FEATURES,)), tf_keras.layers.Dense(16, activation="relu"), tf_keras.layers.Dense(3)]
    )
    x = _rows()
    y = model(x).numpy()
    model.save(out / "keras2.h5")
    model.save(out / "keras2_saved")  # Keras 2's SavedModel folder
    _zip(out / "keras2_saved", out / "keras2_saved.zip")
    for name in ("keras2_h5", "keras2_saved"):
        _save_rows(out, name, {"inputs": x}, {"output_0": y})


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    if "--legacy" in sys.argv:
        assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
        keras2(target)
    else:
        keras3(target)
