"""MLflow pyfunc models through the real server: a custom PythonModel (models-from-code) with a params
schema and its own pinned requirement, saved by the MLflow installed here, zipped, uploaded over gRPC,
served from an environment built from its requirements.txt (mlflow as mlflow-skinny) and queried over
Flight; answers compared with `mlflow.pyfunc.load_model(...).predict` in this process on the same rows.
Broken uploads end ERROR naming what is missing."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import settings_for

from flightline.runtimes.archives import root_prefix
from flightline.runtimes.pyfunc import own_requirements, to_batch
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.backend import ServerGroup, workspace_group
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

PINNED = "six==1.16.0"  # not the server's six (1.17): the answers say which one the model imported
UNRESOLVABLE = "flightline-no-such-package-xyz==1.0"

MODEL_CODE = textwrap.dedent("""
    import mlflow
    import pandas as pd
    import six


    class Scorer(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            threshold = (params or {}).get("threshold", 0.5)
            score = model_input["a"] * 0.5 + model_input["b"] ** 2
            return pd.DataFrame(
                {"score": score, "flag": (score > threshold).astype("int64"), "six": six.__version__}
            )


    mlflow.models.set_model(Scorer())
""")


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})


def zip_folder(folder: Path, dest: Path) -> Path:
    """As `zip -r model.zip model/` makes it: everything under one top folder."""
    with zipfile.ZipFile(dest, "w") as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, Path(folder.name) / file.relative_to(folder))
    dest.chmod(0o644)
    return dest


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    # In the system temp dir, not pytest's owner-only tmp_path: the sandbox user must reach the envs.
    base = Path(tempfile.mkdtemp(prefix="flightline-pyfunc-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def saved(world: Path) -> Path:
    """The MLflow model directory, saved the default way with a signature that has params."""
    import mlflow
    from mlflow.models import infer_signature

    code = world / "scorer.py"
    code.write_text(MODEL_CODE)
    sample = rows(8)
    output = pd.DataFrame({"score": sample["a"], "flag": np.zeros(8, "int64"), "six": "x"})
    signature = infer_signature(sample, output, params={"threshold": 0.5})
    folder = world / "scorer"
    mlflow.pyfunc.save_model(
        str(folder), python_model=str(code), signature=signature, pip_requirements=[PINNED]
    )
    return folder


@pytest.fixture(scope="module")
def app(world: Path) -> Iterator[App]:
    settings = replace(settings_for(world / "data"), envs_dir=str(world / "envs"))
    with App(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(app: App) -> Iterator[Client]:
    with Client(app.grpc_address) as c:
        yield c


@pytest.fixture(scope="module")
def workspace(client: Client) -> int:
    created = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="pyfunc"))
    return int(created.id)


def upload(client: Client, workspace: int, path: Path, name: str) -> model_pb2.ModelVersion:
    meta = model_pb2.UploadMetadata(
        name=name, workspace_id=workspace, conversion=model_pb2.Conversion(framework="mlflow")
    )
    return client.upload_file(path, meta).version


def test_requirements_come_from_the_model_with_mlflow_as_mlflow_skinny(saved: Path, world: Path) -> None:
    archive = zip_folder(saved, world / "read.zip")
    with zipfile.ZipFile(archive) as opened:
        assert root_prefix(opened.namelist()) == "scorer/"
    requirements, python = own_requirements(archive)
    import mlflow

    assert requirements == (f"mlflow-skinny=={mlflow.__version__}", PINNED)
    assert python == "3.11"


def test_a_pyfunc_model_is_served_from_its_own_environment_as_mlflow_predicts(
    app: App, client: Client, workspace: int, saved: Path, world: Path
) -> None:
    import mlflow

    version = upload(client, workspace, zip_folder(saved, world / "scorer.zip"), "scorer")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime) == ("mlflow", "pyfunc")
    assert version.runtime_kind == model_pb2.RUNTIME_KIND_CONTAINERIZED
    assert f"mlflow-skinny=={mlflow.__version__}" in version.conversion.requirements
    assert PINNED in version.conversion.requirements and version.conversion.python_version == "3.11"
    # The column signature became one field per column; outputs likewise.
    served_in = pa.ipc.read_schema(pa.py_buffer(version.input_schema))
    served_out = pa.ipc.read_schema(pa.py_buffer(version.output_schema))
    assert [(f.name, f.type) for f in served_in] == [("a", pa.float64()), ("b", pa.float64())]
    assert [(f.name, f.type) for f in served_out] == [
        ("score", pa.float64()),
        ("flag", pa.int64()),
        ("six", pa.string()),
    ]
    [env] = app.environments.built()
    assert PINNED in env.requirements and f"mlflow-skinny=={mlflow.__version__}" in env.requirements

    deployment = client.deploy(workspace, "scorer", version.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    data = rows(1000, seed=1)
    served = infer(deployment.flight_location, "scorer", pa.Table.from_pandas(data), mode="outputs")
    expected = mlflow.pyfunc.load_model(str(saved)).predict(data)
    assert served.num_rows == 1000
    np.testing.assert_allclose(served.column("out.score").to_numpy(), expected["score"].to_numpy())
    assert served.column("out.flag").to_pylist() == expected["flag"].tolist()
    assert 0 < sum(served.column("out.flag").to_pylist()) < 1000  # the default threshold splits them
    # The model imported its own pinned six, in its environment's runtime server, not the server's.
    assert set(served.column("out.six").to_pylist()) == {"1.16.0"} != set(expected["six"])
    server = app.backend.server(ServerGroup(env.key, workspace_group(workspace)))
    assert set(server.models) == {f"{workspace}/scorer.0"}


def _broken(world: Path, name: str, files: dict[str, str]) -> Path:
    folder = world / name
    folder.mkdir()
    for relative, text in files.items():
        (folder / relative).write_text(text)
    return zip_folder(folder, world / f"{name}.zip")


def test_an_archive_without_mlmodel_is_an_error_naming_it(
    client: Client, workspace: int, world: Path
) -> None:
    archive = _broken(world, "no-mlmodel", {"model.pkl": "not a model", "requirements.txt": "six\n"})
    version = upload(client, workspace, archive, "no-mlmodel")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "has no MLmodel file" in version.status_reason, version.status_reason


def test_a_model_without_the_python_function_flavor_is_an_error_naming_it(
    client: Client, workspace: int, world: Path
) -> None:
    mlmodel = "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    sklearn_version: 1.9.1\n"
    archive = _broken(world, "no-pyfunc", {"MLmodel": mlmodel, "model.pkl": "x"})
    version = upload(client, workspace, archive, "no-pyfunc")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "has no python_function flavor (its flavors: sklearn)" in version.status_reason


def test_an_unresolvable_requirement_is_an_error_naming_it(
    client: Client, workspace: int, saved: Path, world: Path
) -> None:
    folder = world / "unresolvable"
    shutil.copytree(saved, folder)
    (folder / "requirements.txt").write_text(f"mlflow\n{UNRESOLVABLE}\n")
    version = upload(client, workspace, zip_folder(folder, world / "unresolvable.zip"), "unresolvable")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert UNRESOLVABLE in version.status_reason and "Traceback" not in version.status_reason


def test_outputs_become_arrow_columns_whatever_predict_returns() -> None:
    declared = pa.schema([("y", pa.float32())])
    values = np.array([1.5, 2.5], dtype=np.float32)
    for result in (values, pd.Series(values, name="other"), values.tolist(), pd.DataFrame({"y": values})):
        assert to_batch(result, declared).column("y").to_pylist() == [1.5, 2.5], type(result)
    tensor = to_batch(np.arange(6.0).reshape(3, 2), pa.schema([]))
    assert tensor.schema.names == ["predictions"] and tensor.column(0).type == pa.list_(pa.float64(), 2)
    with pytest.raises(ValueError, match="returned no column 'z'"):
        to_batch(
            pd.DataFrame({"a": [1.0], "b": [2.0]}), pa.schema([("z", pa.float64()), ("b", pa.float64())])
        )


def test_params_of_the_signature_reach_predict(saved: Path) -> None:
    """The runtime declares the signature's params and passes a request's to MLflow (in this process:
    the server's MLflow is the one that saved it); how they travel over Flight is runtimes/params.py."""
    import mlflow

    from flightline.runtimes.archives import unpacked
    from flightline.runtimes.base import ModelSpec
    from flightline.runtimes.pyfunc import PyfuncRuntime

    with unpacked(saved) as root:
        runtime = PyfuncRuntime.load(ModelSpec(root, "mlflow"))
    assert runtime.params_schema == pa.schema([("threshold", pa.float64())])
    data = rows(50, seed=2)
    batch = pa.RecordBatch.from_pandas(data, preserve_index=False)
    strict = runtime.infer_with_params(batch, {"threshold": 1.0}).column("flag").to_pylist()
    expected = mlflow.pyfunc.load_model(str(saved)).predict(data, params={"threshold": 1.0})
    assert strict == expected["flag"].tolist() != runtime.infer(batch).column("flag").to_pylist()


TENSOR_CODE = textwrap.dedent("""
    import mlflow
    import numpy as np


    class Projector(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.asarray(model_input, dtype=np.float32) @ np.arange(6, dtype=np.float32).reshape(3, 2)


    mlflow.models.set_model(Projector())
""")


def test_a_tensor_signature_is_a_fixed_size_list_column_and_predict_gets_the_ndarray(world: Path) -> None:
    """In this process (no environment to build): the tensor form of inputs and outputs."""
    import mlflow
    from mlflow.models import infer_signature

    from flightline.runtimes.base import ModelSpec
    from flightline.runtimes.host import Host
    from flightline.runtimes.pyfunc import PyfuncRuntime, describe

    code = world / "projector.py"
    code.write_text(TENSOR_CODE)
    x = np.random.default_rng(3).normal(size=(20, 3)).astype(np.float32)
    folder = world / "projector"
    signature = infer_signature(x, x[:, :2])
    mlflow.pyfunc.save_model(str(folder), python_model=str(code), signature=signature)
    served_in, served_out = describe(zip_folder(folder, world / "projector.zip"))
    assert served_in == pa.schema([pa.field("inputs", pa.list_(pa.float32(), 3), nullable=False)])
    assert served_out == pa.schema([pa.field("predictions", pa.list_(pa.float32(), 2), nullable=False)])
    host = Host(PyfuncRuntime.load(ModelSpec(folder, "mlflow", served_in, served_out)))
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3)
    result = host.run(pa.record_batch([column], names=["inputs"]))
    got = np.stack(result.column("predictions").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, mlflow.pyfunc.load_model(str(folder)).predict(x), rtol=1e-6)


def test_reading_requirements_imports_no_model_framework(saved: Path, world: Path) -> None:
    """The control plane calls the plug-ins' `own_requirements`: importing and running them loads
    neither mlflow nor the BYOP `mac` package (nor the model's code)."""
    import subprocess
    import sys

    archive = zip_folder(saved, world / "imports.zip")
    check = (
        "import sys; from pathlib import Path; "
        "from flightline.runtimes import byop, pyfunc; "
        f"print(pyfunc.own_requirements(Path({str(archive)!r}))[0]); "
        f"print(byop.own_requirements(Path({str(archive)!r}))[0]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'mac', 'six', 'pandas')))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]", out
    assert PINNED in out.splitlines()[0] and PINNED in out.splitlines()[1]
