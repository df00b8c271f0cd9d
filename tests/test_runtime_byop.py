"""Arbitrary Python (BYOP) through the real server: a zip written in the guide's style (a script
extending mac.inference.Inference and mac.inference.creation.InferenceBuilder, a pickled KMeans, a
requirements.txt with pinned packages) uploaded over gRPC, built into its own environment, deployed and
queried over Flight with a ragged column; bad zips end ERROR naming what is missing."""

from __future__ import annotations

import pickle
import shutil
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import settings_for
from sklearn.cluster import KMeans

from flightline.runtimes.byop import from_arrays, to_array
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.backend import ServerGroup, workspace_group
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

SKLEARN = "scikit-learn==1.9.1"  # the version the pickle below is written with (the server's)
PINNED = "six==1.16.0"  # not the server's six (1.17): the answers say which one the model imported
UNRESOLVABLE = "flightline-no-such-package-xyz==1.0"

INPUT = pa.schema([("points", pa.list_(pa.float64(), 2)), ("history", pa.list_(pa.float64()))])
OUTPUT = pa.schema(
    [
        ("cluster", pa.int32()),
        ("history_mean", pa.float64()),
        ("history_sorted", pa.list_(pa.float64())),
        ("six", pa.string()),
    ]
)

# In the guide's style: any file name, any class names, artifacts relative to config.model_path.
CUSTOM_INFERENCE = textwrap.dedent('''
    """KMeans clustering of 2-D points, plus a summary of each row's variable-length history."""
    import pickle
    from typing import Any, Set

    import numpy as np
    import six
    from sklearn.cluster import KMeans

    from mac.config.inference import CustomInferenceConfig
    from mac.exceptions import InferenceDataValidationError
    from mac.inference import Inference
    from mac.inference.creation import InferenceBuilder
    from mac.types import InferenceData


    class ClusteringInference(Inference):
        @property
        def expected_model_types(self) -> Set[Any]:
            return {KMeans}

        @Inference.model.setter
        def model(self, model) -> None:
            self._raise_error_if_model_is_wrong_type(model)
            self._model = model

        def _predict(self, input_data: InferenceData) -> InferenceData:
            points = input_data["points"]
            if points.ndim != 2 or points.shape[1] != 2:
                raise InferenceDataValidationError("points must be pairs")
            history = input_data["history"]
            return {
                "cluster": self.model.predict(points),
                "history_mean": np.array([row.mean() if len(row) else 0.0 for row in history]),
                "history_sorted": np.array([np.sort(row) for row in history] + [None], dtype=object)[:-1],
                "six": np.array([six.__version__] * len(points)),
            }


    class ClusteringBuilder(InferenceBuilder):
        @property
        def inference(self) -> ClusteringInference:
            return ClusteringInference()

        def create(self, config: CustomInferenceConfig) -> ClusteringInference:
            inference = self.inference
            with open(config.model_path / "kmeans.pkl", "rb") as file:
                inference.model = pickle.load(file)
            return inference
''')

BUILDER_ONLY = textwrap.dedent("""
    from mac.inference.creation import InferenceBuilder

    class LonelyBuilder(InferenceBuilder):
        @property
        def inference(self):
            return None

        def create(self, config):
            return None
""")

SECOND_BUILDER = textwrap.dedent("""
    from mac.inference.creation import InferenceBuilder

    class AnotherBuilder(InferenceBuilder):
        @property
        def inference(self):
            return None

        def create(self, config):
            return None
""")

WRONG_TYPE = CUSTOM_INFERENCE.replace(
    "inference.model = pickle.load(file)", "inference._model = {'not': 'a KMeans'}"
)


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    # In the system temp dir, not pytest's owner-only tmp_path: the sandbox user must reach the envs.
    base = Path(tempfile.mkdtemp(prefix="flightline-byop-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def kmeans() -> KMeans:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    points = np.concatenate([c + rng.normal(size=(50, 2)) for c in centers])
    return KMeans(n_clusters=3, n_init=3, random_state=0).fit(points)


def byop_zip(world: Path, name: str, files: dict[str, str | bytes]) -> Path:
    """`zip -r name.zip name/`, as the guide makes the archive."""
    archive = world / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr(f"{name}/", "")
        for relative, content in files.items():
            opened.writestr(f"{name}/{relative}", content)
    archive.chmod(0o644)
    return archive


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
    created = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="byop"))
    return int(created.id)


def upload(
    client: Client, workspace: int, path: Path, name: str, input_schema: pa.Schema | None = INPUT
) -> model_pb2.ModelVersion:
    conversion = model_pb2.Conversion(
        framework="custom",
        input_schema=input_schema.serialize().to_pybytes() if input_schema is not None else b"",
        output_schema=OUTPUT.serialize().to_pybytes(),
    )
    meta = model_pb2.UploadMetadata(name=name, workspace_id=workspace, conversion=conversion)
    return client.upload_file(path, meta).version


def good_files(kmeans: KMeans, requirements: str = f"{SKLEARN}\n{PINNED}\n") -> dict[str, str | bytes]:
    return {
        "custom_inference.py": CUSTOM_INFERENCE,
        "kmeans.pkl": pickle.dumps(kmeans),
        "requirements.txt": requirements,
    }


def test_a_byop_zip_in_the_guides_style_is_served_from_its_own_environment(
    app: App, client: Client, workspace: int, world: Path, kmeans: KMeans
) -> None:
    version = upload(client, workspace, byop_zip(world, "clustering", good_files(kmeans)), "clustering")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert (version.framework, version.runtime) == ("custom", "byop")
    assert {SKLEARN, PINNED} <= set(version.conversion.requirements)
    [env] = app.environments.built()
    assert {SKLEARN, PINNED} <= set(env.requirements)

    deployment = client.deploy(workspace, "clustering", version.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    rng = np.random.default_rng(1)
    points = rng.normal(scale=4.0, size=(200, 2))
    history = [rng.normal(size=int(n)).tolist() for n in rng.integers(0, 6, size=200)]  # ragged, some empty
    table = pa.table(
        {
            "points": pa.FixedSizeListArray.from_arrays(pa.array(points.ravel()), 2),
            "history": pa.array(history, pa.list_(pa.float64())),
        }
    )
    served = infer(deployment.flight_location, "clustering", table, mode="outputs")
    assert served.schema.names == [f"out.{name}" for name in OUTPUT.names]
    assert served.column("out.cluster").to_pylist() == kmeans.predict(points).tolist()
    means = [float(np.mean(row)) if row else 0.0 for row in history]
    np.testing.assert_allclose(served.column("out.history_mean").to_numpy(), means)
    assert served.column("out.history_sorted").to_pylist() == [sorted(row) for row in history]
    assert set(served.column("out.six").to_pylist()) == {"1.16.0"}  # its own six, in its environment
    server = app.backend.server(ServerGroup(env.key, workspace_group(workspace)))
    assert set(server.models) == {f"{workspace}/clustering.0"}


@pytest.mark.parametrize(
    ("name", "files", "reason"),
    [
        (
            "no-inference",
            {"builder.py": BUILDER_ONLY},
            "no script defines a class extending mac.inference.Inference (scripts: builder.py)",
        ),
        (
            "two-builders",
            {"a.py": CUSTOM_INFERENCE, "b.py": SECOND_BUILDER},
            "found 2 classes extending mac.inference.creation.InferenceBuilder: ClusteringBuilder (a.py), "
            "AnotherBuilder (b.py); exactly one is needed",
        ),
        ("no-script", {"notes.txt": "hello"}, "the archive has no Python script (.py) at its top"),
        (
            "wrong-type",
            {"custom_inference.py": WRONG_TYPE},
            "expected_model_types: the model is a dict; "
            "ClusteringInference.expected_model_types is ['KMeans']",
        ),
    ],
)
def test_bad_zips_end_in_error_naming_what_is_missing(
    client: Client, workspace: int, world: Path, kmeans: KMeans, name: str, files: dict[str, str], reason: str
) -> None:
    contents: dict[str, str | bytes] = {**files, "kmeans.pkl": pickle.dumps(kmeans)}
    version = upload(client, workspace, byop_zip(world, name, contents), name)
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert version.status_reason == reason


def test_an_unresolvable_requirement_is_an_error_naming_it(
    client: Client, workspace: int, world: Path, kmeans: KMeans
) -> None:
    files = good_files(kmeans, f"{SKLEARN}\n{UNRESOLVABLE}\n")
    version = upload(client, workspace, byop_zip(world, "unresolvable", files), "unresolvable")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert UNRESOLVABLE in version.status_reason and "Traceback" not in version.status_reason


def test_an_input_schema_is_required(client: Client, workspace: int, world: Path, kmeans: KMeans) -> None:
    archive = byop_zip(world, "schemaless", good_files(kmeans))
    version = upload(client, workspace, archive, "schemaless", input_schema=None)
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert "needs conversion.input_schema" in version.status_reason


def test_ragged_columns_become_object_arrays_and_back() -> None:
    column = pa.array([[1.0, 2.0], [], [3.0]], pa.list_(pa.float64()))
    rows = to_array(column)
    assert rows.dtype == object and [r.tolist() for r in rows] == [[1.0, 2.0], [], [3.0]]
    fixed = to_array(pa.FixedSizeListArray.from_arrays(pa.array(np.arange(4.0)), 2))
    assert fixed.shape == (2, 2)
    back = from_arrays({"r": rows, "n": np.array([1, 2, 3])}, pa.schema([("r", pa.list_(pa.float64()))]))
    assert back.column("r").to_pylist() == [[1.0, 2.0], [], [3.0]] and back.schema.names == ["r"]


def test_the_uploads_own_requirement_wins_over_the_archives(
    client: Client, workspace: int, world: Path, kmeans: KMeans
) -> None:
    conversion = model_pb2.Conversion(
        framework="custom", input_schema=INPUT.serialize().to_pybytes(), requirements=["SIX == 1.15.0"]
    )
    meta = model_pb2.UploadMetadata(name="overridden", workspace_id=workspace, conversion=conversion)
    version = client.upload_file(byop_zip(world, "overridden", good_files(kmeans)), meta).version
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    assert list(version.conversion.requirements) == ["SIX == 1.15.0", SKLEARN]


def test_a_requirements_line_that_is_not_a_requirement_is_an_error_naming_it(
    client: Client, workspace: int, world: Path, kmeans: KMeans
) -> None:
    files = good_files(kmeans, "--index-url http://127.0.0.1:9/simple\nsix\n")
    version = upload(client, workspace, byop_zip(world, "index-url", files), "index-url")
    assert version.status == model_pb2.MODEL_STATUS_ERROR
    assert version.status_reason.startswith(
        "requirements.txt in the archive: invalid requirement '--index-url http://127.0.0.1:9/simple'"
    ), version.status_reason


def test_the_mac_api_checks_model_types_and_assignment() -> None:
    from flightline.runtimes.byop import _mac

    inference_base, builder_base, config_class = _mac()
    import mac.exceptions
    import mac.types

    class Doubler(inference_base):  # type: ignore[misc, valid-type]
        @property
        def expected_model_types(self) -> set[type]:
            return {float}

        def _predict(self, input_data: mac.types.InferenceData) -> mac.types.InferenceData:
            return {"y": input_data["x"] * self.model}

    doubler = Doubler()
    with pytest.raises(mac.exceptions.ModelNotAssignedError):
        doubler.predict({"x": np.ones(2)})
    with pytest.raises(TypeError, match=r"the model is a str; Doubler.expected_model_types is \['float'\]"):
        doubler.model = "two"
    doubler.model = 2.0
    assert doubler.predict({"x": np.ones(2)})["y"].tolist() == [2.0, 2.0]
    assert config_class(model_path=Path("/m")).model_path == Path("/m")
    assert issubclass(mac.exceptions.InferenceDataValidationError, Exception)
    with pytest.raises(TypeError, match="abstract"):
        builder_base()
