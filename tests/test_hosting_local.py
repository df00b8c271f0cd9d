"""The local-process backend against real runtime server processes: many models per server, restarts
that bring every model back, unloads, trust groups, and what a runtime process may see."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.flight_service import runtime_client
from flightline.server.hosting.backend import LoadRequest, ServerGroup
from flightline.server.hosting.local import LocalBackend, RuntimeFault, State
from flightline.server.hosting.sandbox import SYSTEM_PATH, sandbox_environment
from flightline.server.store.artifacts import ArtifactStore

GROUP = ServerGroup("server", "ws-1")
STEP = textwrap.dedent("""
    import pandas as pd
    def wallaroo_json(data: pd.DataFrame):
        return pd.DataFrame({"doubled": data["n"] * FACTOR})
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; it no longer runs.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def run(location: str, key: str, values: list[int], secret: str = "") -> list[int]:
    batch = pa.record_batch([pa.array(values)], names=["n"])
    with runtime_client(location, secret) as client:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(key, "raw"))
        with writer:
            writer.begin(batch.schema)
            writer.write_batch(batch)
            result = reader.read_chunk().data
            writer.done_writing()
    return [int(v) for v in result.column(0).to_pylist()]


@pytest.fixture
def failures() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def backend(tmp_path: Path, failures: list[tuple[str, str]]) -> Iterator[LocalBackend]:
    def on_failure(key: str, reason: str, by_fault: bool) -> None:
        assert not by_fault  # these tests' failures are the models' own
        failures.append((key, reason))

    store = ArtifactStore(str(tmp_path / "store"))
    with LocalBackend(
        tmp_path / "runtimes", store, check_interval=0.1, retry_for=5.0, on_failure=on_failure
    ) as hosting:
        yield hosting


def step(backend: LocalBackend, tmp_path: Path, key: str, factor: int, source: str = STEP) -> LoadRequest:
    path = tmp_path / f"{key}.py"
    path.write_text(f"FACTOR = {factor}\n{source}")
    sha256 = backend.store.put_file(path).sha256
    return LoadRequest(key=key, runtime="python", artifact=sha256, framework="python")


def test_two_models_on_one_server_one_unloaded(backend: LocalBackend, tmp_path: Path) -> None:
    location = backend.ensure_server(GROUP)
    assert location.startswith("grpc+unix://")
    backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
    backend.load(GROUP, step(backend, tmp_path, "b.0", 3))
    server = backend.server(GROUP)
    assert sorted(server.models) == ["a.0", "b.0"] and backend.groups() == [GROUP]
    assert run(location, "a.0", [1, 2], backend.secret(GROUP)) == [2, 4]
    assert run(location, "b.0", [1, 2], backend.secret(GROUP)) == [3, 6]
    pid = server.pid
    backend.unload(GROUP, "b.0")
    with pytest.raises(pa.ArrowKeyError):
        run(location, "b.0", [1], backend.secret(GROUP))
    assert run(location, "a.0", [5], backend.secret(GROUP)) == [
        10
    ]  # the same process keeps serving the other model
    assert (server.pid, sorted(server.models)) == (pid, ["a.0"])
    backend.unload(GROUP, "b.0")  # unloading what is not loaded is a no-op
    backend.unload(GROUP, "a.0")  # the last model gone: the server stops
    assert backend.groups() == [] and not alive(pid)
    backend.load(GROUP, step(backend, tmp_path, "c.0", 4))  # the next load starts a fresh one
    fresh = backend.server(GROUP)
    assert fresh is not server and fresh.pid != pid and fresh.location != location
    assert run(fresh.location, "c.0", [1], fresh.secret) == [4]


def test_killed_server_comes_back_with_both_models(backend: LocalBackend, tmp_path: Path) -> None:
    location = backend.ensure_server(GROUP)
    backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
    backend.load(GROUP, step(backend, tmp_path, "b.0", 3))
    server = backend.server(GROUP)
    first_pid = server.pid
    os.kill(first_pid, signal.SIGKILL)
    assert wait_until(lambda: server.restarts == 1, timeout=10)
    assert backend.wait_healthy(GROUP, timeout=30) is server
    assert server.pid != first_pid and server.location == location
    assert run(location, "a.0", [1], backend.secret(GROUP)) == [2]
    assert run(location, "b.0", [1], backend.secret(GROUP)) == [3]
    assert backend.healthy(GROUP)


def test_tcp_transport_restarts_on_the_same_port(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    with LocalBackend(tmp_path / "runtimes", store, transport="tcp", check_interval=0.1) as backend:
        location = backend.ensure_server(GROUP)
        assert location.startswith("grpc+tcp://127.0.0.1:") and not location.endswith(":0")
        backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
        os.kill(backend.server(GROUP).pid, signal.SIGKILL)
        assert wait_until(lambda: backend.server(GROUP).restarts == 1, timeout=10)
        backend.wait_healthy(GROUP, timeout=30)
        assert backend.server(GROUP).location == location
        assert run(location, "a.0", [4], backend.secret(GROUP)) == [8]


def test_load_error_names_the_reason_and_keeps_the_others(backend: LocalBackend, tmp_path: Path) -> None:
    location = backend.ensure_server(GROUP)
    backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
    broken = step(backend, tmp_path, "bad.0", 1, "raise RuntimeError('missing weights file')\n")
    with pytest.raises(ModelLoadError, match="missing weights file"):
        backend.load(GROUP, broken)
    assert sorted(backend.server(GROUP).models) == ["a.0"]
    assert run(location, "a.0", [1], backend.secret(GROUP)) == [2]


def test_model_that_no_longer_loads_after_a_restart_is_reported(
    backend: LocalBackend, tmp_path: Path, failures: list[tuple[str, str]]
) -> None:
    location = backend.ensure_server(GROUP)
    backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
    fragile = step(backend, tmp_path, "b.0", 3)
    backend.load(GROUP, fragile)
    # The artifact's bytes change under the server (as a corrupted disk would): it cannot load again.
    placed = backend.artifacts(GROUP).folder / fragile.artifact
    placed.unlink()
    placed.write_text("raise RuntimeError('corrupted after the first start')\n")
    server = backend.server(GROUP)
    os.kill(server.pid, signal.SIGKILL)
    assert wait_until(lambda: bool(failures), timeout=30)
    [(key, reason)] = failures
    assert key == "b.0" and "corrupted after the first start" in reason
    backend.wait_healthy(GROUP, timeout=30)
    assert sorted(server.models) == ["a.0"] and server.state is State.HEALTHY
    assert run(location, "a.0", [1], backend.secret(GROUP)) == [2]


def test_groups_get_their_own_processes(backend: LocalBackend, tmp_path: Path) -> None:
    other = ServerGroup("server", "ws-2")
    backend.load(GROUP, step(backend, tmp_path, "a.0", 2))
    backend.load(other, step(backend, tmp_path, "b.0", 3))
    assert backend.server(GROUP).pid != backend.server(other).pid
    assert backend.ensure_server(GROUP) != backend.ensure_server(other)
    with pytest.raises(pa.ArrowKeyError):  # workspace 2's model is not reachable on workspace 1's server
        run(backend.ensure_server(GROUP), "b.0", [1], backend.secret(GROUP))
    with pytest.raises(flight.FlightUnauthenticatedError):  # and the other's secret does not open it
        run(backend.ensure_server(GROUP), "a.0", [1], backend.secret(other))


def test_runtime_environment_is_an_allow_list() -> None:
    # The contract changed from a deny-list to an allow-list (issue 7): OMP_NUM_THREADS and KEYBOARD, which
    # the deny-list let through, no longer arrive either; the caller passes what a runtime needs.
    environ = {
        "PATH": "/home/flightline/bin:/usr/bin",
        "HOME": "/home/flightline",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "KEYBOARD": "us",
        "FLIGHTLINE_METADATA_URL": "postgresql://flightline:pw@db/flightline",
        "flightline_data_dir": "/var/lib/flightline",
        "DATABRICKS_TOKEN": "dapi-123",
        "GITHUB_TOKEN_FILE": "/run/token",
        "AWS_SECRET_ACCESS_KEY": "abc",
        "AZURE_CLIENT_SECRET": "abc",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp.json",
        "OPENAI_API_KEY": "sk-1",
        "stripe_key": "sk-2",
    }
    home = Path("/srv/sandbox/work/a.0")
    assert sandbox_environment(environ, home=home, extra={"OMP_NUM_THREADS": "1"}) == {
        "PATH": SYSTEM_PATH,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


ENVIRONMENT_STEP = textwrap.dedent("""
    import os
    import pandas as pd

    def wallaroo_json(data: pd.DataFrame):
        return pd.DataFrame({"names": [",".join(sorted(os.environ))] * len(data)})
""")


def test_runtime_process_gets_the_filtered_environment(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLINE_GRPC_PORT", "50051")
    monkeypatch.setenv("REGISTRY_TOKEN", "secret")
    monkeypatch.setenv("MODEL_THREADS", "2")
    script = tmp_path / "environment.py"
    script.write_text(ENVIRONMENT_STEP)
    sha256 = backend.store.put_file(script).sha256
    backend.load(GROUP, LoadRequest(key="env.0", runtime="python", artifact=sha256, framework="python"))
    batch = pa.record_batch([pa.array([1])], names=["n"])
    with runtime_client(backend.ensure_server(GROUP), backend.secret(GROUP)) as client:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("env.0", "raw"))
        with writer:
            writer.begin(batch.schema)
            writer.write_batch(batch)
            names = set(reader.read_chunk().data.column("names")[0].as_py().split(","))
            writer.done_writing()
    assert {"PATH", "HOME", "PYTHONUNBUFFERED"} <= names
    assert not {"FLIGHTLINE_GRPC_PORT", "REGISTRY_TOKEN", "MODEL_THREADS"} & names  # an allow-list now


CONTROL_PLANE = textwrap.dedent("""
    import sys
    import threading
    from pathlib import Path

    from flightline.server.hosting.backend import LoadRequest, ServerGroup
    from flightline.server.hosting.local import LocalBackend
    from flightline.server.store.artifacts import ArtifactStore

    store = ArtifactStore(sys.argv[1] + "/store")
    backend = LocalBackend(Path(sys.argv[1]) / "runtimes", store)
    sha256 = store.put_file(Path(sys.argv[2])).sha256
    group = ServerGroup("server", "shared")
    backend.load(group, LoadRequest(key="mlp.0", runtime="onnx", artifact=sha256, framework="onnx"))
    print(backend.server(group).pid, flush=True)
    threading.Event().wait()
""")


def test_runtime_exits_when_the_control_plane_is_killed(tmp_path: Path) -> None:
    model = build_mlp(tmp_path / "mlp.onnx")
    control_plane = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE, str(tmp_path), str(model)], stdout=subprocess.PIPE, text=True
    )
    runtime_pid = 0
    try:
        assert control_plane.stdout is not None
        runtime_pid = int(control_plane.stdout.readline())
        assert alive(runtime_pid)
        control_plane.kill()  # SIGKILL: no cleanup code runs in the control plane
        control_plane.wait(timeout=10)
        assert wait_until(lambda: not alive(runtime_pid), timeout=10)
    finally:
        if control_plane.poll() is None:
            control_plane.kill()
            control_plane.wait()
        if runtime_pid and alive(runtime_pid):  # the runtime leads its own process group
            os.killpg(runtime_pid, signal.SIGKILL)


def test_unknown_runtime_is_the_models_load_error(backend: LocalBackend, tmp_path: Path) -> None:
    request = step(backend, tmp_path, "x.0", 1)
    with pytest.raises(ModelLoadError, match="nope") as failure:
        backend.load(GROUP, LoadRequest("x.0", "nope", request.artifact, "python"))
    assert not isinstance(failure.value, RuntimeFault)  # INVALID_ARGUMENT from `load`: not retried
    assert "x.0" not in backend.server(GROUP).models
