"""Processes that scale apart (issue 7 item 5): roles, instance ownership, front doors that learn routes
from the metadata store. Real servers throughout: control-plane Apps, front-door Apps and a front door
started as `flightline serve --role frontdoor`, on one SQLite file or one PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
from conftest import settings_for
from support.auth import flight_connect
from support.mlp import build_mlp
from support.postgres import new_postgres_database
from support.wait import wait_until
from test_deployments import POSTPROCESS, features, upload
from test_store import add_version

from flightline.server.app import App, FrontDoorApp
from flightline.server.client import Client, infer
from flightline.server.dataplane.routes import LocalStep, RemoteStep
from flightline.server.settings import Settings
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import DeploymentStatus, DeploymentStep, ModelStatus
from flightline.server.store.secrets import Secrets
from flightline.v1 import deployment_pb2, workspace_pb2

PORT0 = ("--flight-port", "0")


# Servers sharing a database share the key of its secrets at rest (runtime servers' secrets, which front
# doors read with the placements; registry tokens).
SHARED_KEY = Secrets.generate_key()


def shared(settings: Settings, database_url: str, artifacts: Path, **overrides: object) -> Settings:
    return replace(
        settings, database_url=database_url, artifacts_url=str(artifacts), secret_key=SHARED_KEY, **overrides
    )


def deploy_pipeline(client: Client, tmp_path: Path, name: str) -> tuple[Path, deployment_pb2.Deployment]:
    """An ONNX model (runs in front doors) then a Python step (runs on the owner's runtime server)."""
    ws = int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)
    path = build_mlp(tmp_path / "mlp.onnx")
    script = tmp_path / "post.py"
    script.write_text(POSTPROCESS)
    model = upload(client, ws, path, "logits", "onnx")
    post = upload(client, ws, script, "post", "python")
    deployment = client.deploy(ws, name, model, post)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    return path, deployment


def expected_scores(path: Path, values: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path)).run(None, {"input": values})[0][:, 0] * 2.0)


def assert_scores(location: str, name: str, path: Path, seed: int) -> None:
    values, table = features(32, seed=seed)
    result = infer(location, name, table, mode="outputs")
    np.testing.assert_allclose(
        result.column("out.score").to_numpy(), expected_scores(path, values), rtol=1e-5
    )


def healthy(location: str) -> bool:
    try:
        with flight_connect(location) as conn:
            return [r.body.to_pybytes() for r in conn.do_action(flight.Action("healthcheck", b""))] == [b"ok"]
    except flight.FlightUnavailableError:
        return False


def not_found(location: str, name: str, table: pa.Table) -> bool:
    try:
        infer(location, name, table)
    except pa.ArrowKeyError:
        return True
    except flight.FlightUnavailableError:  # until the next poll, the route still names the stopped runtime
        return False
    return False


def test_two_front_doors_serve_the_same_deployment(tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path}/shared/meta.db", tmp_path / "shared" / "artifacts"
    control = shared(settings_for(tmp_path / "a"), url, artifacts)
    door = shared(settings_for(tmp_path / "b"), url, artifacts, role="frontdoor", route_poll_seconds=0.2)
    with App(control) as first, FrontDoorApp(door) as second, Client(first.grpc_address) as client:
        assert wait_until(lambda: second.route_sync.ready)  # nothing RUNNING: ready after one sync
        assert first.instance_id != second.instance_id
        path, deployment = deploy_pipeline(client, tmp_path, "scored")
        assert wait_until(lambda: deployment.flight_path in second.router.names(), timeout=10)

        # The second front door runs the ONNX step itself and reaches the first's Python runtime.
        route = second.router.get(deployment.flight_path)
        assert [type(s) for s in route.steps] == [LocalStep, RemoteStep]
        assert route.steps[1].location == deployment.steps[1].location
        values, table = features(64, seed=4)
        for location in (first.flight_location, second.flight_location):
            result = infer(location, "scored", table, mode="outputs")
            np.testing.assert_allclose(
                result.column("out.score").to_numpy(), expected_scores(path, values), rtol=1e-5
            )

        client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="scored"))
        assert wait_until(lambda: not_found(second.flight_location, "scored", table), timeout=5)
        assert second.router.names() == []


def test_a_front_door_is_not_ready_until_every_running_deployment_is_routed(tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path}/meta.db", tmp_path / "artifacts"
    # A deployment RUNNING from before placements were recorded: its owner has not resumed it yet.
    store = MetadataStore(url, owner="elsewhere")
    ws = store.create_workspace("w")
    version = add_version(store, ws.id, "m", status=ModelStatus.READY)
    store.create_deployment(ws.id, "old", [DeploymentStep(version.model_id, version.version)])
    store.update_deployment(ws.id, "old", DeploymentStatus.RUNNING)
    door = shared(settings_for(tmp_path / "b"), url, artifacts, role="frontdoor", route_poll_seconds=0.1)
    with FrontDoorApp(door) as front:
        assert not wait_until(lambda: healthy(front.flight_location), timeout=1)
        store.update_deployment(ws.id, "old", DeploymentStatus.STOPPED)
        assert wait_until(lambda: healthy(front.flight_location), timeout=5)
    store.close()


def test_two_control_planes_on_one_postgresql_keep_to_their_own_work(
    tmp_path: Path, postgres_server: str
) -> None:
    url, artifacts = new_postgres_database(postgres_server), tmp_path / "artifacts"
    a = shared(settings_for(tmp_path / "a"), url, artifacts, instance_id="a")
    b = shared(settings_for(tmp_path / "b"), url, artifacts, instance_id="b")
    values, table = features(16, seed=1)
    with App(a) as first, Client(first.grpc_address) as client:
        path, _ = deploy_pipeline(client, tmp_path, "scored")
        # A version A is preparing (as if A were converting it right now).
        ws = first.store.create_workspace("prep")
        converting = add_version(first.store, ws.id, "busy", status=ModelStatus.CONVERTING)
        assert converting.owner == "a"

        with App(b) as second:
            assert first.store.get_model_version(converting.model_id, converting.version).status is (
                ModelStatus.CONVERTING
            )
            # B started none of A's runtimes nor routes A's deployment in its own process tree.
            assert second.deployments.live(1, "scored") is None
            assert second.backend.groups() == []
            stored = second.store.get_deployment(1, "scored")
            assert (stored.status, stored.owner) == (DeploymentStatus.RUNNING, "a")
            np.testing.assert_allclose(
                infer(first.flight_location, "scored", table, mode="outputs").column("out.score").to_numpy(),
                expected_scores(path, values),
                rtol=1e-5,
            )

    # A's own restart recovers its own work: the interrupted version ends ERROR, the deployment runs again.
    with App(a) as again:
        interrupted = again.store.get_model_version(converting.model_id, converting.version)
        assert interrupted.status is ModelStatus.ERROR
        assert again.deployments.live(1, "scored") is not None
        assert_scores(again.flight_location, "scored", path, seed=3)
        # Undeployed through the other control plane: the owner stops serving it and stops its runtimes.
        with App(b) as other, Client(other.grpc_address) as client:
            client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="scored"))
            # Its route goes first, then its runtime processes.
            assert wait_until(lambda: again.backend.groups() == [], timeout=10)
            assert again.deployments.live(1, "scored") is None
            assert not_found(again.flight_location, "scored", table)


def test_serve_role_frontdoor_as_a_process(tmp_path: Path) -> None:
    url, artifacts = f"sqlite:///{tmp_path}/shared/meta.db", tmp_path / "shared" / "artifacts"
    with (
        App(shared(settings_for(tmp_path / "a"), url, artifacts)) as control,
        Client(control.grpc_address) as client,
    ):
        path, _ = deploy_pipeline(client, tmp_path, "scored")
        env = {
            **os.environ,
            "FLIGHTLINE_DATA_DIR": str(tmp_path / "door"),
            "FLIGHTLINE_DATABASE_URL": url,
            "FLIGHTLINE_ARTIFACTS_URL": str(artifacts),
            "FLIGHTLINE_SECRET_KEY": SHARED_KEY,
        }
        door = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flightline.server.cli",
                "serve",
                "--role",
                "frontdoor",
                "--flight-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert door.stdout is not None
            line = door.stdout.readline()
            assert line.startswith("FLIGHTLINE_SERVING grpc= flight=grpc+tcp://"), line
            location = line.split()[2].removeprefix("flight=")
            assert wait_until(lambda: healthy(location), timeout=30)
            values, table = features(32, seed=2)
            result = infer(location, "scored", table, mode="outputs")
            np.testing.assert_allclose(
                result.column("out.score").to_numpy(), expected_scores(path, values), rtol=1e-5
            )
            assert (tmp_path / "door" / "instance-id").read_text().strip() != control.instance_id
        finally:
            door.send_signal(signal.SIGTERM)
            assert door.wait(timeout=30) == 0
