"""A Python step deployed through the real server (gRPC upload, deploy, Flight inference) reports what it
could see of the server: its secret environment variable, /proc/<server>/environ, the metadata database
and the data folder. It sees none of them, and cannot change its own artifact. The steps of two
workspaces run as two users: neither reaches the other's runtime server (folder, socket, /proc)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import settings_for

from flightline.server.app import App
from flightline.server.client import Client, infer
from flightline.server.hosting.backend import ServerGroup, workspace_group
from flightline.server.hosting.local import group_user
from flightline.v1 import model_pb2, workspace_pb2

SECRET = "e2e-secret-the-step-must-not-see"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="not root: the step runs as the server's own user, which may read its own files and /proc",
)

STEP = textwrap.dedent("""
    import json, os
    import pandas as pd

    def attempt(action):
        try:
            return action()
        except OSError as error:
            return "denied:" + type(error).__name__

    def wallaroo_json(data: pd.DataFrame):
        seen = {{
            "env": dict(os.environ),
            "uid": os.getuid(),
            "parent_environ": attempt(lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read().hex()),
            "database": attempt(lambda: open({database!r}, "rb").read().decode("latin-1")),
            "data_dir": attempt(lambda: os.listdir({data!r})),
            "own_artifact_write": attempt(lambda: open(__file__, "a").write("# tampered")),
            "own_artifact_chmod": attempt(lambda: os.chmod(__file__, 0o666)),
            "artifacts_listing": attempt(lambda: os.listdir(os.path.dirname(__file__))),
        }}
        return pd.DataFrame({{"seen": [json.dumps(seen)] * len(data)}})
""")


@pytest.fixture
def world() -> Iterator[Path]:
    # The data folder must be where any user could reach it, or the denials would only prove that
    # pytest's own tmp_path is owner-only.
    base = Path(tempfile.mkdtemp(prefix="flightline-e2e-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_deployed_python_step_cannot_see_the_servers_secrets(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLINE_E2E_SECRET", SECRET)
    monkeypatch.setenv("REGISTRY_TOKEN", SECRET)
    data = world / "data"
    with App(settings_for(data)) as app, Client(app.grpc_address) as client:
        database = data.resolve() / "flightline.db"
        assert database.is_file()
        script = tmp_path / "probe.py"
        script.write_text(STEP.format(database=str(database), data=str(data.resolve())))
        workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="e2e"))
        meta = model_pb2.UploadMetadata(
            name="probe", workspace_id=workspace.id, conversion=model_pb2.Conversion(framework="python")
        )
        uploaded = client.upload_file(script, meta)
        assert uploaded.version.status == model_pb2.MODEL_STATUS_READY, uploaded.version.status_reason
        deployment = client.deploy(workspace.id, "probe", uploaded.model_id)
        result = infer(deployment.flight_location, "probe", pa.table({"n": [1]}), mode="outputs")
        text = result.column("out.seen")[0].as_py()
        assert SECRET not in text
        seen = json.loads(text)
        assert not {"FLIGHTLINE_E2E_SECRET", "REGISTRY_TOKEN"} & set(seen["env"])
        [group] = app.backend.groups()
        # User code runs as its workspace's own pool user (the shared default user is for data artifacts).
        step_uid = app.sandbox.uid_of(group_user(app.sandbox, group))
        if os.geteuid() == 0:
            assert seen["uid"] == step_uid != 0 and step_uid != app.sandbox.uid
            assert seen["parent_environ"] == "denied:PermissionError"
            assert seen["database"] == "denied:PermissionError"
            assert seen["data_dir"] == "denied:PermissionError"
            assert seen["own_artifact_write"] == "denied:PermissionError"
            # Its artifact is a hand-over it cannot change (a link to the 0444 stored file, which is not
            # the sandbox user's), in its group's folder, which it cannot list.
            assert seen["own_artifact_chmod"] == "denied:PermissionError"
            assert seen["artifacts_listing"] == "denied:PermissionError"
        server = app.backend.server(group)
        artifact = app.backend.artifacts(group).folder / uploaded.version.sha256
        assert artifact.stat().st_mode & 0o777 == 0o444 and artifact.stat().st_uid == os.geteuid()
        # The unix socket lies in the runtime's own folder: the sandbox user's, 0700 (root reaches it).
        socket_dir = Path(server.location.removeprefix("grpc+unix://")).parent
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        assert socket_dir.stat().st_uid == step_uid
        # Owner-only on disk, whoever runs the server.
        assert (data.stat().st_mode & 0o777, database.stat().st_mode & 0o777) == (0o700, 0o600)


@needs_root
def test_uid_isolation_is_on_as_root(world: Path) -> None:
    with App(settings_for(world / "data")) as app:
        assert app.sandbox.isolates_user and app.sandbox.uid != 0


# Reports what it could reach of another workspace's runtime server, whose working folder, socket and pid
# arrive as input columns (a step without them, the target itself, reports only who it is).
NEIGHBOUR_STEP = textwrap.dedent("""
    import json, os, socket
    import pandas as pd

    def attempt(action):
        try:
            return action()
        except OSError as error:
            return "denied:" + type(error).__name__

    def connect(path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            return "connected"

    def wallaroo_json(data: pd.DataFrame):
        seen = {"uid": os.getuid(), "gid": os.getgid()}
        if "workdir" in data.columns:
            row = data.iloc[0]
            seen["workdir"] = attempt(lambda: os.listdir(row["workdir"]))
            seen["socket"] = attempt(lambda: connect(row["socket"]))
            seen["environ"] = attempt(lambda: open(f"/proc/{row['pid']}/environ", "rb").read().hex())
        return pd.DataFrame({"seen": [json.dumps(seen)] * len(data)})
""")


def test_two_workspaces_steps_cannot_reach_each_others_runtime_server(world: Path, tmp_path: Path) -> None:
    with App(settings_for(world / "data")) as app, Client(app.grpc_address) as client:
        script = tmp_path / "neighbour.py"
        script.write_text(NEIGHBOUR_STEP)

        def deploy(name: str) -> tuple[str, ServerGroup, int]:
            workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name))
            meta = model_pb2.UploadMetadata(
                name=name, workspace_id=workspace.id, conversion=model_pb2.Conversion(framework="python")
            )
            uploaded = client.upload_file(script, meta)
            assert uploaded.version.status == model_pb2.MODEL_STATUS_READY, uploaded.version.status_reason
            deployment = client.deploy(workspace.id, name, uploaded.model_id)
            assert deployment.flight_location, deployment
            [group] = [g for g in app.backend.groups() if g.trust == workspace_group(workspace.id)]
            return deployment.flight_location, group, workspace.id

        location_b, group_b, _ = deploy("ws-b")
        location_a, group_a, _ = deploy("ws-a")
        server_b = app.backend.server(group_b)
        socket_b = server_b.location.removeprefix("grpc+unix://")
        workdir_b = str(Path(socket_b).parent)
        probe = pa.table({"workdir": [workdir_b], "socket": [socket_b], "pid": [str(server_b.pid)]})
        seen_a = json.loads(infer(location_a, "ws-a", probe, mode="outputs").column("out.seen")[0].as_py())
        seen_b = json.loads(
            infer(location_b, "ws-b", pa.table({"n": [1]}), mode="outputs").column("out.seen")[0].as_py()
        )
        # B's server answered through the front door all along: what A was refused, root still reaches.
        assert app.backend.healthy(group_b)
        if os.geteuid() != 0:
            pytest.skip("not root: both steps run as the server's own user, so no uid separates them")
        assert seen_a["workdir"] == "denied:PermissionError"
        assert seen_a["socket"] == "denied:PermissionError"
        assert seen_a["environ"] == "denied:PermissionError"
        uid_a, uid_b = (app.sandbox.uid_of(group_user(app.sandbox, g)) for g in (group_a, group_b))
        assert seen_a["uid"] == uid_a and seen_b["uid"] == uid_b
        assert len({uid_a, uid_b, app.sandbox.uid, 0}) == 4
        assert Path(workdir_b).stat().st_uid == uid_b


# A pickle whose unpickling probes the server before it hands back a real model. Every process that
# unpickles it (the preparation subprocess, then the sklearn runtime server) writes what it saw to its
# own file in a folder anyone may write: user code reports by the only door it has.
def test_an_uploaded_pickle_cannot_see_the_servers_secrets(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pickle runs in every process that unpickles it; each reports a secret it did not get and a
    /proc/<server>/environ and database it could not read."""
    import pickle

    import numpy as np
    from sklearn.kernel_ridge import KernelRidge  # not convertible: served by the sklearn runtime itself

    monkeypatch.setenv("FLIGHTLINE_E2E_SECRET", SECRET)
    reports = world / "reports"
    reports.mkdir()
    reports.chmod(0o777)
    rng = np.random.default_rng(0)
    model = KernelRidge(kernel="rbf").fit(rng.normal(size=(20, 3)), rng.normal(size=20))
    data = world / "data"
    with App(settings_for(data)) as app, Client(app.grpc_address) as client:
        database = data.resolve() / "flightline.db"
        probe = textwrap.dedent(f"""
            import json, os
            def attempt(action):
                try:
                    return action()
                except OSError as error:
                    return "denied:" + type(error).__name__
            seen = {{
                "uid": os.getuid(),
                "secret": os.environ.get("FLIGHTLINE_E2E_SECRET"),
                "parent_environ": attempt(lambda: open("/proc/{os.getpid()}/environ", "rb").read().hex()),
                "database": attempt(lambda: open({str(database)!r}, "rb").read().decode("latin-1")),
            }}
            with open(os.path.join({str(reports)!r}, str(os.getpid()) + ".json"), "w") as out:
                json.dump(seen, out)
        """)

        class Probe:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                # exec() the probe, then hand back the real model, unpickled from bytes inside the pickle.
                return (eval, (f"(exec({probe!r}), __import__('pickle').loads({pickle.dumps(model)!r}))[1]",))

        artifact = world / "model.pkl"
        artifact.write_bytes(pickle.dumps(Probe()))
        workspace = client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="pickled"))
        schema = pa.schema([pa.field("inputs", pa.list_(pa.float64(), 3))])
        conversion = model_pb2.Conversion(framework="sklearn", input_schema=schema.serialize().to_pybytes())
        meta = model_pb2.UploadMetadata(name="pickled", workspace_id=workspace.id, conversion=conversion)
        uploaded = client.upload_file(artifact, meta)
        assert uploaded.version.status == model_pb2.MODEL_STATUS_READY, uploaded.version.status_reason
        assert uploaded.version.runtime == "sklearn"  # the pickle itself is served, not an ONNX conversion
        deployment = client.deploy(workspace.id, "pickled", uploaded.model_id)
        rows = rng.normal(size=(4, 3))
        table = pa.table({"inputs": pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 3)})
        result = infer(deployment.flight_location, "pickled", table, mode="outputs")
        served = result.column(result.column_names[0]).to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(served.astype(float).ravel(), model.predict(rows), rtol=1e-6)
    seen = [json.loads(report.read_text()) for report in sorted(reports.glob("*.json"))]
    assert len(seen) >= 2  # the preparation subprocess and the runtime server both unpickled it
    for report in seen:
        assert report["secret"] is None
        if os.geteuid() == 0:
            assert report["uid"] != 0
            assert report["parent_environ"] == "denied:PermissionError"
            assert report["database"] == "denied:PermissionError"
