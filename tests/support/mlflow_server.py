"""A real `mlflow server` subprocess for tests, and `populate` to register small sklearn models in it.

Start-up takes several seconds, so use it once per session (tests/conftest.py `mlflow_registry`):

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.url, populate(server.url)

Importing this module is cheap: mlflow is imported only inside `populate`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import httpx
import numpy as np

# No telemetry, and no job-runner subprocesses (7 extra Python processes the tests never use).
# Set for this process too, before mlflow is imported by populate().
QUIET_MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
for _key, _value in QUIET_MLFLOW_ENV.items():
    os.environ.setdefault(_key, _value)

MULTI_VERSION_MODEL = "iris-multi"
CODE_MODEL = "iris-with-code"
EMPTY_MODEL = "no-versions-yet"
SINGLE_MODELS = tuple(f"iris-single-{i}" for i in range(1, 6))
HELPER_FILE = "flightline_helper.py"
HELPER_SOURCE = b'"""Shipped with the model through code_paths."""\n\n\ndef scale(x):\n    return x * 2\n'
# A plain run artifact (not part of the model) logged in the code model's run: reachable as runs:/<run_id>/...
RUN_NOTE = "notes/readme.txt"
RUN_NOTE_TEXT = "trained on iris-like blobs\n"
MODEL_FILES = frozenset({"MLmodel", "model.pkl", "conda.yaml", "python_env.yaml", "requirements.txt"})


@dataclass(frozen=True)
class MlflowServer:
    url: str
    port: int
    # The server's own copy of every logged file (--artifacts-destination): an oracle for downloads.
    artifacts_dir: Path
    log_path: Path


class Populated(TypedDict):
    names: list[str]  # every registered model, sorted
    multi_version_model: str  # has versions "1", "2", "3"
    versions: list[str]
    code_model: str  # its version 1 has a code/ directory holding HELPER_FILE; its run has RUN_NOTE
    empty_model: str  # registered, no versions
    description: str  # the multi-version model's description
    model_files: frozenset[str]  # top-level files of every version
    probe: np.ndarray[Any, Any]  # float64 (8, 4) inputs
    predictions: dict[tuple[str, str], np.ndarray[Any, Any]]  # (name, version) -> model.predict(probe)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ends the server and its uvicorn child: both run in the process group started for them."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        if not _group_alive(process.pid, grace):
            return


def _group_alive(pgid: int, grace: float) -> bool:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> bool:
    """True once /health answers OK; False if the process died (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        try:
            process.wait(timeout=0.25)
            return False
        except subprocess.TimeoutExpired:
            continue
    _stop(process)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"mlflow server at {url} was not healthy after {timeout:.0f}s; log tail:\n{tail}")


@contextlib.contextmanager
def mlflow_server(root: Path, startup_timeout: float = 120.0) -> Iterator[MlflowServer]:
    """Runs `mlflow server` on 127.0.0.1 with its SQLite store and served artifacts under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    artifacts_dir = root / "artifacts"
    log_path = root / "mlflow-server.log"
    env = {**os.environ, **QUIET_MLFLOW_ENV}
    for _attempt in range(3):  # another process may grab the free port before mlflow binds it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "mlflow",
            "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination", str(artifacts_dir),
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if _wait_healthy(process, url, log_path, startup_timeout):
            break
    else:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mlflow server did not start; log tail:\n{tail}")
    try:
        yield MlflowServer(url=url, port=port, artifacts_dir=artifacts_dir, log_path=log_path)
    finally:
        _stop(process)


def _iris_like(seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Three Gaussian blobs in 4 features, like iris."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 30)
    centers = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    return centers[labels] + rng.normal(scale=0.4, size=(90, 4)), labels


def populate(url: str) -> Populated:
    """Logs and registers small LogisticRegression models (pickle format, so each has model.pkl).

    8 registered models: iris-multi with 3 versions, iris-with-code (a code/ subdirectory),
    iris-single-1..5, and no-versions-yet without versions. About 3 s.
    """
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient(url)
    probe, _ = _iris_like(seed=999)
    probe = probe[:8]
    predictions: dict[tuple[str, str], np.ndarray[Any, Any]] = {}
    description = "Three versions of an iris-like classifier"
    try:
        experiment_id = client.create_experiment("flightline-tests")
        client.create_registered_model(MULTI_VERSION_MODEL, description=description)
        client.create_registered_model(EMPTY_MODEL)
        with tempfile.TemporaryDirectory() as scratch:
            helper = Path(scratch) / HELPER_FILE
            helper.write_bytes(HELPER_SOURCE)
            plan = [(MULTI_VERSION_MODEL, None)] * 3 + [(CODE_MODEL, [str(helper)])]
            plan += [(name, None) for name in SINGLE_MODELS]
            for seed, (name, code_paths) in enumerate(plan):
                features, labels = _iris_like(seed)
                model = LogisticRegression(max_iter=500).fit(features, labels)
                with mlflow.start_run(experiment_id=experiment_id):
                    info = mlflow.sklearn.log_model(
                        model,
                        name="model",
                        serialization_format="pickle",
                        registered_model_name=name,
                        code_paths=code_paths,
                        pip_requirements=["scikit-learn"],  # skips slow requirement inference
                    )
                    if code_paths:
                        mlflow.log_text(RUN_NOTE_TEXT, RUN_NOTE)
                predictions[(name, str(info.registered_model_version))] = model.predict(probe)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return Populated(
        names=sorted([MULTI_VERSION_MODEL, CODE_MODEL, EMPTY_MODEL, *SINGLE_MODELS]),
        multi_version_model=MULTI_VERSION_MODEL,
        versions=["1", "2", "3"],
        code_model=CODE_MODEL,
        empty_model=EMPTY_MODEL,
        description=description,
        model_files=MODEL_FILES,
        probe=probe,
        predictions=predictions,
    )
