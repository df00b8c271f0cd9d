"""Models logged and registered the default way by the MLflow installed here (no serialization or
format options), into a running `mlflow server`, with the rows to compare on.

    logged = log_default_models(url)

Each entry names its registered model; every one is at version 1 unless said otherwise.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("amount", "age", "score", "tenure", "visits")
SKOPS = "sk-skops"  # LogisticRegression on a DataFrame: column signature, default format (skops)
CLOUDPICKLE = "sk-cloudpickle"  # KernelRidge (no ONNX converter), cloudpickle: the sklearn runtime
TENSOR = "sk-tensor"  # LogisticRegression on a float32 array: tensor signature [-1, 5]
XGB = "xgb-ubj"  # XGBClassifier: model.ubj, column signature
XGB_NATIVE = "xgb-native"  # multi-output XGBRegressor: onnxmltools cannot convert it -> xgboost runtime
ONNX = "onnx-tensor"  # an ONNX MLP logged with mlflow.onnx: tensor signature
ALIASED = "sk-aliased"  # versions 1 and 2; alias "champion" on version 1


@dataclass(frozen=True)
class Logged:
    url: str
    rows: pd.DataFrame  # float64 COLUMNS, 16 rows
    model_ids: dict[str, str]  # registered name -> MLflow 3 logged model id (m-...) of version 1


def _frame(seed: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(rows, len(COLUMNS))), columns=list(COLUMNS))


def log_default_models(url: str) -> Logged:
    import mlflow
    import onnx
    import xgboost
    from onnx import TensorProto, helper
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LogisticRegression

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient(url)
    train = _frame(0, 300)
    labels = (train["amount"] + train["age"] > 0).astype(int)
    ids: dict[str, str] = {}
    try:
        mlflow.set_experiment("flightline-mlflow-models")
        with mlflow.start_run():
            example = train.head(5)
            reqs = ["scikit-learn"]  # skips MLflow's slow requirement inference

            def log(flavor: Any, model: Any, name: str, **kwargs: Any) -> None:
                info = flavor.log_model(
                    model, name="model", registered_model_name=name, pip_requirements=reqs, **kwargs
                )
                ids[name] = info.model_id

            log(mlflow.sklearn, LogisticRegression().fit(train, labels), SKOPS, input_example=example)
            ridge = KernelRidge(kernel="rbf").fit(train, train["score"] * 2)
            log(mlflow.sklearn, ridge, CLOUDPICKLE, input_example=example, serialization_format="cloudpickle")
            array = train.to_numpy(np.float32)
            log(mlflow.sklearn, LogisticRegression().fit(array, labels), TENSOR, input_example=array[:5])
            booster = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(train, labels)
            log(mlflow.xgboost, booster, XGB, input_example=example)
            multi = xgboost.XGBRegressor(
                n_estimators=4, tree_method="hist", multi_strategy="multi_output_tree"
            )
            multi.fit(train, np.stack([train["amount"], train["age"]], axis=1))
            log(mlflow.xgboost, multi, XGB_NATIVE, input_example=example)
            log(mlflow.onnx, _onnx_model(helper, TensorProto, onnx), ONNX, input_example=array[:5])
            for seed in (1, 2):
                fitted = LogisticRegression(C=seed).fit(train, (train["score"] > seed - 1.5).astype(int))
                log(mlflow.sklearn, fitted, ALIASED, input_example=example)
        client.set_registered_model_alias(ALIASED, "champion", "1")
    finally:
        mlflow.set_tracking_uri(previous)
    return Logged(url, _frame(99, 16), ids)


def _onnx_model(helper: Any, tensor: Any, onnx: Any) -> Any:
    """y = relu(x @ W + b), 5 -> 3, float32."""
    rng = np.random.default_rng(3)
    weights = helper.make_tensor("W", tensor.FLOAT, [5, 3], rng.normal(size=15).astype(np.float32).tolist())
    bias = helper.make_tensor("b", tensor.FLOAT, [3], [0.1, -0.2, 0.3])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", tensor.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("y", tensor.FLOAT, [None, 3])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def pyfunc_predict(url: str, uri: str, rows: Any) -> Any:
    """What MLflow itself answers for `rows`: the reference every served result is compared with."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            local = mlflow.artifacts.download_artifacts(uri, dst_path=str(Path(scratch)))
            return mlflow.pyfunc.load_model(local).predict(rows)
    finally:
        mlflow.set_tracking_uri(previous)
