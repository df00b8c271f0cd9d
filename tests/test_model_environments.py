"""Models with their own requirements, through the real server: the environment is built at upload (uv,
with its cache), the preparation and the runtime server run with its interpreter, deploys only look it
up, and runtime servers are per environment. Also a runtime family's environment, through the real
local backend."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for

from flightline.runtimes.flight_service import runtime_client
from flightline.runtimes.plugins import SERVER_ENVIRONMENT, plugin
from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.backend import LoadRequest, ServerGroup, workspace_group
from flightline.server.hosting.environments import (
    FAMILIES,
    EnvironmentBuildError,
    EnvironmentMissing,
    Environments,
    wanted,
)
from flightline.server.hosting.local import LocalBackend
from flightline.server.store.artifacts import ArtifactStore
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

PINNED = "six==1.16.0"
UNRESOLVABLE = "flightline-no-such-package-xyz==1.0"
SERVER_SIX = importlib.metadata.version("six")

SIX_STEP = textwrap.dedent("""
    import sys
    import pandas as pd
    import six

    def wallaroo_json(data: pd.DataFrame):
        return pd.DataFrame({"six": [six.__version__] * len(data), "prefix": [sys.prefix] * len(data)})
""")
PREFIX_STEP = textwrap.dedent("""
    import sys
    import pandas as pd

    def wallaroo_json(data: pd.DataFrame):
        return pd.DataFrame({"prefix": [sys.prefix] * len(data)})
""")


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    # In the system temp dir, not pytest's owner-only tmp_path: the sandbox user must reach the envs.
    base = Path(tempfile.mkdtemp(prefix="flightline-model-envs-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


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
    created = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="envs"))
    return int(created.id)


@pytest.fixture(scope="module")
def script(world: Path) -> Path:
    path = world / "six_step.py"
    path.write_text(SIX_STEP)
    path.chmod(0o644)
    return path


def upload(
    client: Client, workspace: int, script: Path, name: str, *requirements: str
) -> model_pb2.ModelVersion:
    conversion = model_pb2.Conversion(framework="python", requirements=list(requirements))
    meta = model_pb2.UploadMetadata(name=name, workspace_id=workspace, conversion=conversion)
    return client.upload_file(script, meta).version


def answer(deployment: deployment_pb2.Deployment, name: str) -> tuple[str, str]:
    table = infer(deployment.flight_location, name, pa.table({"n": [1, 2]}), mode="outputs")
    assert table.column("out.six").to_pylist()[0] == table.column("out.six").to_pylist()[1]
    return table.column("out.six")[0].as_py(), table.column("out.prefix")[0].as_py()


def build_count(app: App, status: str) -> float:
    value = app.observer.metrics.registry.get_sample_value(
        "flightline_environment_builds_total", {"framework": "python", "status": status}
    )
    return value or 0.0


def test_a_pinned_requirement_is_served_from_its_own_environment_and_runtime_server(
    app: App, client: Client, workspace: int, script: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flightline.server.services.models")
    assert SERVER_SIX != "1.16.0"  # else this test would prove nothing
    started = time.monotonic()
    pinned = upload(client, workspace, script, "six-pinned", PINNED)
    took = time.monotonic() - started
    assert pinned.status == model_pb2.MODEL_STATUS_READY, pinned.status_reason
    plain = upload(client, workspace, script, "six-server")
    assert plain.status == model_pb2.MODEL_STATUS_READY, plain.status_reason
    print(f"upload with a new environment took {took:.1f} s")  # shown with -s: the build time

    [env] = app.environments.built()
    assert PINNED in env.requirements and any(r.startswith("pandas==") for r in env.requirements)
    assert build_count(app, "ok") == 1.0
    # Each was prepared (inspected) by the interpreter it will run with.
    prepared_by = [r.getMessage() for r in caplog.records if "prepared by" in r.getMessage()]
    assert prepared_by == [
        f"model six-pinned v1 prepared by the interpreter of {env.path}",
        f"model six-server v1 prepared by the interpreter of {sys.prefix}",
    ]

    pinned_deployment = client.deploy(workspace, "six-pinned", pinned.model_id)
    plain_deployment = client.deploy(workspace, "six-server", plain.model_id)
    assert pinned_deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, (
        pinned_deployment.status_reason
    )
    assert plain_deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, plain_deployment.status_reason
    six, prefix = answer(pinned_deployment, "six-pinned")
    assert (six, Path(prefix)) == ("1.16.0", env.path)
    six, prefix = answer(plain_deployment, "six-server")
    assert (six, prefix) == (SERVER_SIX, sys.prefix)

    trust = workspace_group(workspace)
    assert set(app.backend.groups()) == {ServerGroup(env.key, trust), ServerGroup(SERVER_ENVIRONMENT, trust)}
    pinned_server = app.backend.server(ServerGroup(env.key, trust))
    plain_server = app.backend.server(ServerGroup(SERVER_ENVIRONMENT, trust))
    assert pinned_server.pid != plain_server.pid
    # Model keys on runtime servers: "<workspace>/<deployment>.<step>".
    assert set(pinned_server.models) == {f"{workspace}/six-pinned.0"}
    assert set(plain_server.models) == {f"{workspace}/six-server.0"}


def test_same_requirements_share_one_environment_and_one_runtime_server(
    app: App, client: Client, workspace: int, script: Path
) -> None:
    # Spelled differently, the same requirement: normalized to the same environment.
    again = upload(client, workspace, script, "six-again", "SIX == 1.16.0")
    assert again.status == model_pb2.MODEL_STATUS_READY, again.status_reason
    [env] = app.environments.built()
    assert build_count(app, "ok") == 1.0  # found, not built again
    deployment = client.deploy(workspace, "six-again", again.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    assert answer(deployment, "six-again")[0] == "1.16.0"
    server = app.backend.server(ServerGroup(env.key, workspace_group(workspace)))
    assert set(server.models) == {f"{workspace}/six-pinned.0", f"{workspace}/six-again.0"}
    assert len(app.backend.groups()) == 2


def test_an_unresolvable_requirement_is_an_error_naming_it_and_leaves_nothing(
    app: App, client: Client, workspace: int, script: Path
) -> None:
    before = sorted(p.name for p in app.environments.root.iterdir())
    broken = upload(client, workspace, script, "broken", UNRESOLVABLE, PINNED)
    assert broken.status == model_pb2.MODEL_STATUS_ERROR
    assert UNRESOLVABLE in broken.status_reason, broken.status_reason
    assert "Traceback" not in broken.status_reason and str(app.environments.root) not in broken.status_reason
    assert sorted(p.name for p in app.environments.root.iterdir()) == before  # no half-built folder
    assert build_count(app, "error") == 1.0
    # Nothing else broken: the pinned deployment still answers, and a deploy of the broken one is refused.
    deployment = client.deployments.GetDeployment(deployment_pb2.GetDeploymentRequest(name="six-pinned"))
    assert answer(deployment, "six-pinned")[0] == "1.16.0"


def test_a_deploy_never_builds_a_missing_environment(
    app: App, client: Client, workspace: int, script: Path
) -> None:
    version = upload(client, workspace, script, "six-wiped", "six==1.15.0")
    assert version.status == model_pb2.MODEL_STATUS_READY, version.status_reason
    [wiped] = [env for env in app.environments.built() if "six==1.15.0" in env.requirements]
    shutil.rmtree(wiped.path)  # the cache was wiped after the upload
    failed = client.deploy(workspace, "six-wiped", version.model_id)
    assert failed.status == deployment_pb2.DEPLOYMENT_STATUS_FAILED
    assert "environment is not built" in failed.status_reason and "re-upload" in failed.status_reason
    assert not wiped.path.exists()  # not rebuilt by the deploy
    client.deployments.Undeploy(deployment_pb2.UndeployRequest(name="six-wiped"))
    # Re-uploading rebuilds it; the new version deploys.
    again = upload(client, workspace, script, "six-wiped", "six==1.15.0")
    assert again.status == model_pb2.MODEL_STATUS_READY, again.status_reason
    assert wiped.path.is_dir()
    deployment = client.deploy(workspace, "six-wiped-2", again.model_id)
    assert deployment.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING, deployment.status_reason
    assert answer(deployment, "six-wiped-2")[0] == "1.15.0"


def test_a_family_plugin_runs_in_its_family_environment_once_it_is_built(world: Path, tmp_path: Path) -> None:
    """A plug-in whose environment is a family (here the "python" family, for a test-only copy of the
    python plug-in): missing until built, then its runtime server runs with that environment's Python."""
    family_plugin = replace(plugin("python"), environment="python")
    environments = Environments(world / "family-envs")
    need = wanted(family_plugin)
    assert need is not None and need.family == "python" and need.requirements == FAMILIES["python"]
    with pytest.raises(EnvironmentMissing, match="flightline runtimes install python"):
        environments.require(need)

    def family_built(name: str) -> bool:  # what ModelService.family_built answers for ListFrameworks
        return environments.lookup(FAMILIES[name]) is not None

    hint = family_plugin.unavailable("python", family_built)
    assert hint.endswith("which is not built: flightline runtimes install python")
    built = environments.family("python")
    assert environments.require(need).key == built.key
    assert family_plugin.unavailable("python", family_built) == ""
    script = tmp_path / "step.py"
    script.write_text(PREFIX_STEP)
    store = ArtifactStore(str(tmp_path / "store"))
    stored = store.put_file(script)
    group = ServerGroup(built.key, workspace_group(1))
    with LocalBackend(
        world / "family-runtimes", store, check_interval=0.1, environments=environments
    ) as backend:
        backend.load(
            group, LoadRequest(key="m", runtime="python", artifact=stored.sha256, framework="python")
        )
        batch = pa.record_batch([pa.array([1])], names=["n"])
        with runtime_client(backend.ensure_server(group), backend.secret(group)) as connection:
            writer, reader = connection.do_exchange(flight.FlightDescriptor.for_path("m", "raw"))
            with writer:
                writer.begin(batch.schema)
                writer.write_batch(batch)
                result = reader.read_chunk().data
                writer.done_writing()
        assert Path(result.column("prefix")[0].as_py()) == built.path
        assert backend.interpreter(group) == str(built.python)


@pytest.mark.parametrize(
    ("requirements", "python_version", "reason"),
    [
        (["six @ file:///etc/passwd"], "", "is a direct reference"),
        (["six==1.16.0; --index-url http://x"], "", "invalid requirement"),
        ([], "--help", "python_version '--help' is not a version"),
        ([], "2.7", "is not a version such as 3.12"),
    ],
)
def test_requirements_from_anywhere_but_the_index_are_refused(
    requirements: list[str], python_version: str, reason: str
) -> None:
    with pytest.raises(EnvironmentBuildError, match=reason):
        wanted(plugin("python"), requirements, python_version)


def test_the_servers_own_python_needs_no_environment() -> None:
    info = sys.version_info
    for same in ("", f"{info.major}.{info.minor}", f"{info.major}.{info.minor}.{info.micro}"):
        assert wanted(plugin("python"), [], same) is None
    need = wanted(plugin("python"), ["pandas==2.2.3", "six"])
    assert need is not None and need.family is None and need.python is None
    assert need.requirements == ("pandas==2.2.3", "six")  # the model's pin replaced the family's pandas
