"""The supervisor against real runtime server processes (an ONNX MLP built here)."""

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

from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.server.hosting.sandbox import SYSTEM_PATH, sandbox_environment
from flightline.server.supervisor import State, Supervisor


def healthcheck(location: str) -> bytes:
    with flight.connect(location) as client:
        (result,) = client.do_action(flight.Action("healthcheck", b""))
        return bytes(result.body.to_pybytes())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; it no longer runs.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def failures() -> list[tuple[str, str, State]]:
    """What the supervisor's on_failure callback saw: (key, reason, the process's state at the call)."""
    return []


@pytest.fixture
def supervisor(tmp_path: Path, failures: list[tuple[str, str, State]]) -> Iterator[Supervisor]:
    def on_failure(key: str, reason: str) -> None:
        # get() takes the supervisor's lock: this would deadlock if the callback ran under it.
        failures.append((key, reason, sup.get(key).state))

    with Supervisor(tmp_path / "runtimes", check_interval=0.1, retry_for=5.0, on_failure=on_failure) as sup:
        yield sup


def test_started_runtime_answers_healthcheck(supervisor: Supervisor, model: Path) -> None:
    proc = supervisor.start("mlp.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    assert proc.location.startswith("grpc+tcp://127.0.0.1:")
    assert (proc.state, proc.restarts, proc.failure) == (State.HEALTHY, 0, None)
    assert healthcheck(proc.location) == b"ok"
    assert supervisor.get("mlp.0") is proc
    assert (supervisor.workdir / "mlp.0" / "spec.json").exists()


def test_load_error_raises_with_the_reason(supervisor: Supervisor, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=r"broken\.onnx is not a valid ONNX model"):
        supervisor.start("broken.0", "onnx", ModelSpec(broken, "onnx"), timeout=60)
    assert supervisor.keys() == []


def test_unknown_runtime_raises_with_the_reason(supervisor: Supervisor, model: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown runtime 'nope'"):
        supervisor.start("x.0", "nope", ModelSpec(model, "onnx"), timeout=60)


def test_killed_runtime_restarts_on_the_same_location(supervisor: Supervisor, model: Path) -> None:
    proc = supervisor.start("mlp.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    location, first_pid = proc.location, proc.pid
    os.kill(first_pid, signal.SIGKILL)
    assert wait_until(lambda: proc.restarts == 1, timeout=10)
    restarted = supervisor.wait_healthy("mlp.0", timeout=30)
    assert restarted is proc
    assert (proc.location, proc.restarts) == (location, 1)
    assert proc.pid != first_pid
    assert healthcheck(location) == b"ok"


def test_runtime_that_cannot_load_again_is_marked_failed(
    supervisor: Supervisor, model: Path, failures: list[tuple[str, str, State]]
) -> None:
    proc = supervisor.start("mlp.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    assert failures == []
    model.write_bytes(b"corrupted after the first start")
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_until(lambda: proc.state is not State.HEALTHY, timeout=10)  # the watcher noticed
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        supervisor.wait_healthy("mlp.0", timeout=30)
    assert proc.state is State.FAILED
    assert proc.failure is not None and "not a valid ONNX model" in proc.failure
    assert proc.restarts == 1  # a load error of the model is not retried: it would fail the same way
    assert not proc.failed_by_fault
    assert failures == [("mlp.0", proc.failure, State.FAILED)]  # reported once, after the state is set


def test_stop_ends_the_process_and_close_ends_the_rest(tmp_path: Path, model: Path) -> None:
    sup = Supervisor(tmp_path / "runtimes")
    first = sup.start("a.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    second = sup.start("b.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    assert first.spec_dir.is_dir()
    sup.stop("a.0")
    assert not alive(first.pid)
    assert alive(second.pid)
    assert first.state is State.STOPPED
    assert not first.spec_dir.exists() and second.spec_dir.is_dir()
    sup.stop("a.0")  # stopping what is not running is a no-op
    sup.close()
    assert not alive(second.pid)
    assert sup.keys() == []


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
    supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLINE_GRPC_PORT", "50051")
    monkeypatch.setenv("REGISTRY_TOKEN", "secret")
    monkeypatch.setenv("MODEL_THREADS", "2")
    script = tmp_path / "environment.py"
    script.write_text(ENVIRONMENT_STEP)
    proc = supervisor.start("env.0", "python", ModelSpec(script, "python"), timeout=60)
    with flight.connect(proc.location) as client:
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("raw"))
        batch = pa.record_batch([pa.array([1])], names=["n"])
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

    from flightline.runtimes.base import ModelSpec
    from flightline.server.supervisor import Supervisor

    supervisor = Supervisor(Path(sys.argv[1]))
    proc = supervisor.start("mlp.0", "onnx", ModelSpec(Path(sys.argv[2]), "onnx"), timeout=60)
    print(proc.pid, flush=True)
    threading.Event().wait()
""")


def test_runtime_exits_when_the_control_plane_is_killed(tmp_path: Path, model: Path) -> None:
    control_plane = subprocess.Popen(
        [sys.executable, "-c", CONTROL_PLANE, str(tmp_path / "runtimes"), str(model)],
        stdout=subprocess.PIPE,
        text=True,
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
