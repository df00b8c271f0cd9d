"""A deployment following a registry alias (services/follow.py) against a real `mlflow server`: the alias
moves, the new version is uploaded and prepared and handed to `update` with the reason; a version that
cannot be prepared is not handed over, the follow says why, and it is not retried.

The follower's rules are tested with an updater that records what it is asked (`follow.Updater`, the
signature of `DeploymentService.update`); the last test runs the real update under streaming clients."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from support.mlflow_models import COLUMNS

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.services.follow import ACTOR, AliasFollower
from flightline.server.store.records import Conversion, Deployment, DeploymentStep, ModelStatus
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

NAME = "follow-model"


@dataclass
class RecordingUpdater:
    calls: list[tuple[int, str, tuple[DeploymentStep, ...], str, str]] = field(default_factory=list)
    app: App | None = None

    def update(
        self, workspace_id: int, name: str, steps: Sequence[DeploymentStep], *, reason: str, actor: str = ""
    ) -> Deployment:
        self.calls.append((workspace_id, name, tuple(steps), reason, actor))
        assert self.app is not None
        return self.app.store.get_deployment(workspace_id, name)


def log_version(url: str, seed: int) -> str:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(url)
    rng = np.random.default_rng(seed)
    train = pd.DataFrame(rng.normal(size=(200, len(COLUMNS))), columns=list(COLUMNS))
    model = LogisticRegression().fit(train, (train["amount"] > seed - 1).astype(int))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=NAME, input_example=train.head(3),
            pip_requirements=["scikit-learn"],
        )  # fmt: skip
    return str(info.registered_model_version)


def log_broken_version(url: str) -> str:
    """A version whose MLmodel says sklearn but whose model file is not a model."""
    import mlflow

    mlflow.set_tracking_uri(url)
    with tempfile.TemporaryDirectory() as scratch, mlflow.start_run() as run:
        folder = Path(scratch) / "broken"
        folder.mkdir()
        (folder / "MLmodel").write_text(
            "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
            "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
        )
        (folder / "model.pkl").write_bytes(b"not a pickle")
        mlflow.log_artifacts(str(folder), "broken")
        created = mlflow.MlflowClient(url).create_model_version(
            NAME, f"runs:/{run.info.run_id}/broken", run.info.run_id
        )
    return str(created.version)


def test_alias_moves_are_followed_and_a_broken_version_is_not(
    app: App, client: Client, mlflow_playground: str
) -> None:
    import mlflow

    url = mlflow_playground
    registry_client = mlflow.MlflowClient(url)
    first = log_version(url, 1)
    registry_client.set_registered_model_alias(NAME, "champion", first)
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="followers"))
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace.id, name="mlflow", url=url)
    )
    uri = f"models:/{NAME}@champion"
    uploaded = client.models.UploadFromRegistry(
        model_pb2.UploadFromRegistryRequest(
            registry_id=registry.id, name="champion", path=uri, workspace_id=workspace.id
        )
    )
    ready = client.wait_version(uploaded.model_id, uploaded.version.version)
    assert ready.status == model_pb2.MODEL_STATUS_READY, ready.status_reason
    client.deploy(workspace.id, "champion", uploaded.model_id)

    updater = RecordingUpdater(app=app)
    follower = AliasFollower(app.store, app.models, app.registries, updater, period=0)
    follow = follower.follow(workspace.id, "champion", registry.id, uri, Conversion(framework=""))
    assert follow.followed_version == first
    assert follower.check() == [] and updater.calls == []  # nothing moved

    second = log_version(url, 2)
    registry_client.set_registered_model_alias(NAME, "champion", second)
    assert follower.check() == [f"alias champion of {NAME} moved to version {second}: serving it"]
    ((workspace_id, name, steps, reason, actor),) = updater.calls
    assert (workspace_id, name, actor) == (workspace.id, "champion", ACTOR)
    assert reason == f"alias champion of {NAME} moved to version {second}"
    new = app.store.get_model_version(steps[0].model_id, steps[0].version)
    assert new.status == ModelStatus.READY and new.origin is not None and new.origin.version == second
    assert app.store.list_follows()[0].followed_version == second

    broken = log_broken_version(url)
    registry_client.set_registered_model_alias(NAME, "champion", broken)
    (line,) = follower.check()
    assert f"moved to version {broken}: not followed (it failed to prepare:" in line
    assert "not a loadable pickle" in line and len(updater.calls) == 1  # the old one keeps serving
    (state,) = app.store.list_follows()
    assert state.followed_version == second and state.status_reason.startswith(f"version {broken} ")
    versions_before = len(app.store.list_model_versions(uploaded.model_id, 100, 0))
    assert follower.check() == []  # the same broken version is not uploaded again
    assert len(app.store.list_model_versions(uploaded.model_id, 100, 0)) == versions_before


def test_follow_alias_over_grpc_and_its_refusals(client: Client, mlflow_playground: str) -> None:
    import grpc
    import mlflow

    from flightline.v1 import deployment_pb2

    url = mlflow_playground
    version = log_version(url, 0)
    mlflow.MlflowClient(url).set_registered_model_alias(NAME, "grpc-champion", version)
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="grpc-follow"))
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace.id, name="mlflow", url=url)
    )
    uri = f"models:/{NAME}@grpc-champion"
    uploaded = client.models.UploadFromRegistry(
        model_pb2.UploadFromRegistryRequest(
            registry_id=registry.id, name="grpc-champion", path=uri, workspace_id=workspace.id
        )
    )
    client.wait_version(uploaded.model_id, uploaded.version.version)
    client.deploy(workspace.id, "grpc-champion", uploaded.model_id)

    def follow(**fields: object) -> deployment_pb2.AliasFollow:
        request = {"workspace_id": workspace.id, "name": "grpc-champion", "registry_id": registry.id}
        message = deployment_pb2.FollowAliasRequest(**{**request, "uri": uri, **fields})  # type: ignore[arg-type]
        answer: deployment_pb2.AliasFollow = client.deployments.FollowAlias(message)
        return answer

    state = follow()
    assert (state.uri, state.followed_version, state.status_reason) == (uri, version, "")
    for fields, code in (
        ({"uri": f"models:/{NAME}/{version}"}, grpc.StatusCode.INVALID_ARGUMENT),  # no alias
        ({"uri": f"models:/{NAME}@nobody"}, grpc.StatusCode.NOT_FOUND),
        ({"name": "no-such-deployment"}, grpc.StatusCode.NOT_FOUND),
        ({"workspace_id": workspace.id + 1000}, grpc.StatusCode.NOT_FOUND),
        ({"uri": "x" * 5000}, grpc.StatusCode.INVALID_ARGUMENT),  # over the limit
    ):
        with pytest.raises(grpc.RpcError) as refused:
            follow(**fields)
        assert refused.value.code() == code, fields


def test_alias_move_is_swapped_in_under_streaming_clients(
    app: App, client: Client, mlflow_playground: str
) -> None:
    """Clients stream without pause while the alias moves: no request fails, and the answers switch
    from version 1's predictions to version 2's (each checked against MLflow's own pyfunc)."""
    import mlflow
    from support.mlflow_models import pyfunc_predict

    url = mlflow_playground
    registry_client = mlflow.MlflowClient(url)
    first = log_version(url, 1)
    registry_client.set_registered_model_alias(NAME, "live", first)
    workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="live"))
    registry = client.registries.CreateRegistry(
        registry_pb2.CreateRegistryRequest(workspace_id=workspace.id, name="mlflow", url=url)
    )
    uri = f"models:/{NAME}@live"
    uploaded = client.models.UploadFromRegistry(
        model_pb2.UploadFromRegistryRequest(
            registry_id=registry.id, name="live", path=uri, workspace_id=workspace.id
        )
    )
    client.wait_version(uploaded.model_id, uploaded.version.version)
    deployment = client.deploy(workspace.id, "live", uploaded.model_id)
    app.follower.follow(workspace.id, "live", registry.id, uri)

    rows = pd.DataFrame(np.random.default_rng(7).normal(size=(64, len(COLUMNS))), columns=list(COLUMNS))
    table = pa.Table.from_pandas(rows, preserve_index=False)
    expected_first = np.asarray(pyfunc_predict(url, f"models:/{NAME}/{first}", rows))
    answers: list[list[np.ndarray]] = [[], []]  # per client, in order
    failures: list[BaseException] = []
    stop = threading.Event()

    def stream(mine: list[np.ndarray]) -> None:
        while not stop.is_set():
            try:
                result = infer(deployment.flight_location, "live", table, mode="outputs")
                mine.append(result.column("out.predictions").to_numpy())
            except BaseException as error:  # every failure counts
                failures.append(error)

    clients = [threading.Thread(target=stream, args=(mine,)) for mine in answers]
    for thread in clients:
        thread.start()
    try:
        second = log_version(url, 0)  # another threshold: other answers
        registry_client.set_registered_model_alias(NAME, "live", second)
        (line,) = app.follower.check()
        assert line.endswith(f"moved to version {second}: serving it"), line
        seen = sum(map(len, answers))
        deadline = time.monotonic() + 30
        while sum(map(len, answers)) < seen + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    expected_second = np.asarray(pyfunc_predict(url, f"models:/{NAME}/{second}", rows))
    assert not (expected_first == expected_second).all()
    assert failures == []
    for mine in answers:  # each client: version 1's answers, then version 2's, never back
        kinds = [1 if (a == expected_first).all() else 2 if (a == expected_second).all() else 0 for a in mine]
        assert kinds and kinds[0] == 1 and kinds[-1] == 2 and kinds == sorted(kinds), kinds


def test_a_follow_is_shown_stopped_from_the_client_and_cli_and_ends_with_undeploy(
    app: App, mlflow_playground: str
) -> None:
    """The Python client and the CLI start and stop a follow; `Deployment.follow` shows it in get and
    list; a stopped follow no longer moves the deployment; Undeploy ends it too."""
    import subprocess
    import sys

    import mlflow

    import flightline
    from flightline.errors import FailedPreconditionError

    url = mlflow_playground
    registry_client = mlflow.MlflowClient(url)
    registry_client.set_registered_model_alias(NAME, "pinned", log_version(url, 0))
    uri = f"models:/{NAME}@pinned"
    cli = [sys.executable, "-m", "flightline.server.cli", "--server", app.grpc_address, "deployments"]
    with flightline.connect(app.grpc_address) as fl:
        ws = fl.workspaces.create("client-follow")
        registry = fl.registries.create("mlflow", url, workspace=ws)
        version = fl.upload(uri, registry=registry.id, name="pinned", workspace=ws)
        fl.deploy("pinned", version, workspace=ws)
        state = fl.follow("pinned", uri, registry=registry, workspace=ws)
        assert state.uri == uri and state.followed_version == version.mlflow["version"]
        shown = fl.deployments.get("pinned", workspace=ws).follow
        assert shown is not None and shown.uri == uri and shown.update_time is not None
        (listed,) = [d for d in fl.deployments.list(workspace=ws) if d.name == "pinned"]
        assert listed.follow == shown

        stopped = subprocess.run(
            [*cli, "unfollow", "pinned", "-w", str(ws.id)], capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith("deployment pinned: follows no alias; revision 1")
        assert fl.deployments.get("pinned", workspace=ws).follow is None
        moved = log_version(url, 1)
        registry_client.set_registered_model_alias(NAME, "pinned", moved)
        assert not [line for line in app.follower.check() if "alias pinned" in line]  # not followed
        with pytest.raises(FailedPreconditionError, match="deployment 'pinned' follows no alias"):
            fl.stop_following("pinned", workspace=ws)
        again = subprocess.run(
            [*cli, "unfollow", "pinned", "-w", str(ws.id)], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 2 and again.stderr.strip() == "error: deployment 'pinned' follows no alias"

        followed = subprocess.run(
            [*cli, "follow", "pinned", uri, "--registry", registry.id, "-w", str(ws.id)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert followed.returncode == 0, followed.stderr
        # Its version came from the alias's model, so that counts as followed; the alias has moved on.
        served = version.mlflow["version"]
        assert followed.stdout.strip() == f"deployment pinned: follows {uri}, serving version {served}"
        assert [line for line in app.follower.check() if "alias pinned" in line] == [
            f"alias pinned of {NAME} moved to version {moved}: serving it"
        ]
        fl.undeploy("pinned", workspace=ws)
        assert all(f.uri != uri for f in app.store.list_follows())
