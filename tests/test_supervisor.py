"""The supervisor against real runtime server processes (an ONNX MLP built here)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest
from support.mlp import build_mlp
from support.wait import wait_until

from flightline.runtimes.base import ModelLoadError, ModelSpec
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
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(tmp_path / "runtimes", check_interval=0.1, max_load_failures=2) as sup:
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


def test_runtime_that_cannot_load_again_is_marked_failed(supervisor: Supervisor, model: Path) -> None:
    proc = supervisor.start("mlp.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    model.write_bytes(b"corrupted after the first start")
    os.kill(proc.pid, signal.SIGKILL)
    assert wait_until(lambda: proc.state is not State.HEALTHY, timeout=10)  # the watcher noticed
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        supervisor.wait_healthy("mlp.0", timeout=30)
    assert proc.state is State.FAILED
    assert proc.failure is not None and "not a valid ONNX model" in proc.failure
    assert proc.restarts == 2  # max_load_failures attempts, then it stops trying


def test_stop_ends_the_process_and_close_ends_the_rest(tmp_path: Path, model: Path) -> None:
    sup = Supervisor(tmp_path / "runtimes")
    first = sup.start("a.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    second = sup.start("b.0", "onnx", ModelSpec(model, "onnx"), timeout=60)
    sup.stop("a.0")
    assert not alive(first.pid)
    assert alive(second.pid)
    assert first.state is State.STOPPED
    sup.stop("a.0")  # stopping what is not running is a no-op
    sup.close()
    assert not alive(second.pid)
    assert sup.keys() == []
