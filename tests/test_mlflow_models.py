"""MLflow models uploaded as a unit from a real `mlflow server`, logged the default way by the MLflow
installed here, routed by flavor, served, and compared with `mlflow.pyfunc.load_model(...).predict`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pyarrow as pa
import pytest
from support import mlflow_models as logged_models
from support.mlflow_models import Logged, log_default_models, pyfunc_predict

from flightline.server.client import Client, infer
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2


@pytest.fixture(scope="module")
def logged(mlflow_playground: str) -> Logged:
    url = mlflow_playground
    return log_default_models(url)


@pytest.fixture
def setup(client: Client, logged: Logged) -> Iterator[tuple[Client, int, str]]:
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="mlflow-team"))
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace.id, name="mlflow", url=logged.url)
    )
    yield client, int(workspace.id), str(registry.id)


def upload(
    client: Client, workspace_id: int, registry_id: str, path: str, name: str, **conversion: object
) -> model_pb2.ModelVersion:
    response = client.models.UploadFromRegistry(
        model_pb2.UploadFromRegistryRequest(
            registry_id=registry_id,
            name=name,
            path=path,
            workspace_id=workspace_id,
            conversion=model_pb2.Conversion(**conversion),  # type: ignore[arg-type]
        )
    )
    return client.wait_version(response.model_id, response.version.version)


def serve(client: Client, workspace_id: int, version: model_pb2.ModelVersion, rows: pa.Table) -> pa.Table:
    deployment = client.deploy(workspace_id, version.model_name, version.model_id)
    return infer(deployment.flight_location, version.model_name, rows, mode="outputs")


def columns(logged: Logged) -> pa.Table:
    return pa.Table.from_pandas(logged.rows, preserve_index=False)


def tensor(logged: Logged) -> pa.Table:
    x = logged.rows.to_numpy(np.float32)
    return pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})


def test_sklearn_skops_with_a_column_signature_converts_and_takes_the_dataframe_as_is(
    setup: tuple[Client, int, str], logged: Logged
) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.SKOPS}/1"
    version = upload(client, workspace_id, registry_id, uri, "skops")  # no framework: the flavor says
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime) == ("sklearn", "onnx")
    origin = version.mlflow
    assert (origin.name, origin.version, origin.flavor, origin.serialization) == (
        logged_models.SKOPS,
        "1",
        "sklearn",
        "skops",
    )
    assert origin.signature == "columns" and "python_function" in origin.flavors
    assert "skl2onnx" in version.converter and "scikit-learn" in version.converter
    served = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
    assert served.names == list(logged_models.COLUMNS)  # one field per named column
    assert version.sha256 != version.original_sha256  # the flavor's file is served; the directory is kept
    result = serve(client, workspace_id, version, columns(logged))
    expected = pyfunc_predict(logged.url, uri, logged.rows)
    np.testing.assert_array_equal(result.column("out.predictions").to_numpy(), np.asarray(expected))


def test_sklearn_cloudpickle_without_a_converter_runs_on_the_sklearn_runtime(
    setup: tuple[Client, int, str], logged: Logged
) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.CLOUDPICKLE}/1"
    version = upload(client, workspace_id, registry_id, uri, "ridge")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.runtime == "sklearn" and version.mlflow.serialization == "cloudpickle"
    assert "KernelRidge" in version.conversion_note  # why it was not converted
    result = serve(client, workspace_id, version, columns(logged))
    expected = np.asarray(pyfunc_predict(logged.url, uri, logged.rows))
    np.testing.assert_allclose(result.column("out.predictions").to_numpy(), expected, rtol=1e-6)


def test_tensor_signature_is_the_seeds_inputs_list(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.TENSOR}/1"
    version = upload(client, workspace_id, registry_id, uri, "tensor")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.mlflow.signature == "tensors" and version.runtime == "onnx"
    served = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
    assert served.field("inputs").type == pa.list_(pa.float32(), len(logged_models.COLUMNS))
    result = serve(client, workspace_id, version, tensor(logged))
    expected = pyfunc_predict(logged.url, uri, logged.rows.to_numpy(np.float32))
    np.testing.assert_array_equal(result.column("out.predictions").to_numpy(), np.asarray(expected))


def test_xgboost_ubj_converts_with_onnxmltools(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.XGB}/1"
    version = upload(client, workspace_id, registry_id, uri, "xgb")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime, version.mlflow.serialization) == ("xgboost", "onnx", "ubj")
    assert "onnxmltools" in version.converter
    result = serve(client, workspace_id, version, columns(logged))
    expected = pyfunc_predict(logged.url, uri, logged.rows)
    np.testing.assert_array_equal(result.column("out.output").to_numpy(), np.asarray(expected))


def test_xgboost_that_does_not_convert_runs_natively(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.XGB_NATIVE}/1"
    version = upload(client, workspace_id, registry_id, uri, "xgb-native")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.runtime == "xgboost" and "xgboost container runtime" in version.conversion_note
    result = serve(client, workspace_id, version, columns(logged))
    expected = np.asarray(pyfunc_predict(logged.url, uri, logged.rows))
    got = np.stack(result.column("out.output").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_onnx_flavor_is_served_as_onnx(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.ONNX}/1"
    version = upload(client, workspace_id, registry_id, uri, "mlp")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime, version.mlflow.flavor) == ("onnx", "onnx", "onnx")
    x = logged.rows.to_numpy(np.float32)
    rows = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    result = serve(client, workspace_id, version, rows)
    expected = pyfunc_predict(logged.url, uri, x)
    got = np.stack(result.column("out.y").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, np.asarray(expected["y"]), rtol=1e-6)


def test_alias_resolves_to_one_immutable_version(setup: tuple[Client, int, str], logged: Logged) -> None:
    import mlflow

    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.ALIASED}@champion"
    first = upload(client, workspace_id, registry_id, uri, "aliased")
    assert first.status == model_pb2.MODEL_STATUS_READY, first.status_reason
    assert (first.mlflow.uri, first.mlflow.alias, first.mlflow.version) == (uri, "champion", "1")
    assert first.source.endswith(f"models:/{logged_models.ALIASED}/1")
    mlflow.MlflowClient(logged.url).set_registered_model_alias(logged_models.ALIASED, "champion", "2")
    try:
        second = upload(client, workspace_id, registry_id, uri, "aliased")
    finally:
        mlflow.MlflowClient(logged.url).set_registered_model_alias(logged_models.ALIASED, "champion", "1")
    assert second.mlflow.version == "2" and second.version == first.version + 1
    assert second.original_sha256 != first.original_sha256
    again = upload(client, workspace_id, registry_id, f"models:/{logged_models.ALIASED}/1", "aliased")
    assert again.original_sha256 == first.original_sha256  # version 1, byte for byte
    with pytest.raises(grpc.RpcError) as unknown:
        upload(client, workspace_id, registry_id, f"models:/{logged_models.ALIASED}@nobody", "aliased")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_logged_model_id_uploads(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    model_id = logged.model_ids[logged_models.SKOPS]
    version = upload(client, workspace_id, registry_id, f"models:/{model_id}", "by-id")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert version.mlflow.model_id == model_id and version.mlflow.version == ""


def test_a_schema_against_the_signature_is_checked(setup: tuple[Client, int, str], logged: Logged) -> None:
    client, workspace_id, registry_id = setup
    uri = f"models:/{logged_models.SKOPS}/1"
    wrong = pa.schema([(name if name != "age" else "years", pa.float64()) for name in logged_models.COLUMNS])
    with pytest.raises(grpc.RpcError) as refused:
        upload(client, workspace_id, registry_id, uri, "checked", input_schema=wrong.serialize().to_pybytes())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'age'" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as misfit:
        upload(client, workspace_id, registry_id, uri, "checked", framework="onnx")
    assert misfit.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "conversion.framework 'onnx'" in (misfit.value.details() or "")
    # The seed's single `inputs` list column is accepted for the same model, and served in that form.
    seed = pa.schema([("inputs", pa.list_(pa.float64(), len(logged_models.COLUMNS)))])
    version = upload(
        client, workspace_id, registry_id, uri, "seed-form", input_schema=seed.serialize().to_pybytes()
    )
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    x = logged.rows.to_numpy(np.float64)
    rows = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})
    result = serve(client, workspace_id, version, rows)
    expected = pyfunc_predict(logged.url, uri, logged.rows)
    np.testing.assert_array_equal(result.column("out.predictions").to_numpy(), np.asarray(expected))


def test_sklearn_with_a_string_column_is_served_by_pyfunc_with_the_dataframe_as_is(
    setup: tuple[Client, int, str], logged: Logged
) -> None:
    """A pipeline one-hot encoding a text column: neither the sklearn runtime nor ONNX takes strings, so
    the flavor's pyfunc serves it, and clients send the DataFrame with its string column."""
    import mlflow
    import pandas as pd
    import sklearn
    import skops
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    client, workspace_id, registry_id = setup
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice"], 300), "amount": rng.normal(size=300)})
    encode = ColumnTransformer(
        [("city", OneHotEncoder(handle_unknown="ignore"), ["city"])], remainder="passthrough"
    )
    model = make_pipeline(encode, LogisticRegression()).fit(
        frame, (frame["city"] == "paris") ^ (frame["amount"] > 0)
    )
    mlflow.set_tracking_uri(logged.url)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model, name="model", registered_model_name="sk-city", input_example=frame.head(3),
            # What MLflow would infer for a skops file, without its slow inference run.
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
        )  # fmt: skip
    uri = "models:/sk-city/1"
    version = upload(client, workspace_id, registry_id, uri, "city")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime) == ("mlflow", "pyfunc")
    assert "string column 'city'" in version.mlflow.route and version.mlflow.flavor == "python_function"
    served = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
    assert served.field("city").type == pa.string() and served.field("amount").type == pa.float64()
    rows = frame.sample(20, random_state=1).reset_index(drop=True)
    result = serve(client, workspace_id, version, pa.Table.from_pandas(rows, preserve_index=False))
    expected = np.asarray(pyfunc_predict(logged.url, uri, rows))
    np.testing.assert_array_equal(result.column(result.column_names[0]).to_numpy(), expected)
    assert len(set(expected.tolist())) == 2  # both classes: the city decides, so it was read
