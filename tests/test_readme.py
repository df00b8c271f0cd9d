"""The README's quickstart blocks run as written, twice in a row: the MLflow server from its one-line
command (on a free port instead of 5000, which other tests may hold), then each Python block as a
script against a real Flightline server, in a fresh folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.mlflow_server import QUIET_MLFLOW_ENV

from flightline.server.access.authn import ADMIN_TOKEN_FILE
from flightline.server.app import App

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n### ", start + 1)
    return text[start : end if end >= 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mlflow_from_readme(folder: Path) -> Iterator[str]:
    (command,) = blocks(section("From MLflow"), "bash")
    port = free_port()
    argv = command.strip().replace(".venv/bin/python", sys.executable).replace("5000", str(port)).split()
    env = {**os.environ, **QUIET_MLFLOW_ENV}
    with open(folder / "mlflow.log", "wb") as log:
        process = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, (folder / "mlflow.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def admin_token(app: App) -> str:
    written = app.settings.data_dir / ADMIN_TOKEN_FILE
    if written.is_file():
        return written.read_text().strip()
    return os.environ["FLIGHTLINE_BOOTSTRAP_TOKEN"]


@pytest.mark.timeout(900)
def test_quickstart_blocks_run_as_written_twice(app: App, tmp_path: Path) -> None:
    python_blocks = blocks(section("Python"), "python")[:1] + blocks(section("From MLflow"), "python")
    assert len(python_blocks) == 2
    with mlflow_from_readme(tmp_path) as mlflow_url:
        # A newcomer's shell: no MLflow run or experiment inherited from tests that ran before in this
        # process (mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID to the environment).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env = {
            **inherited,
            **QUIET_MLFLOW_ENV,
            "FLIGHTLINE_SERVER": app.grpc_address,
            "MLFLOW_TRACKING_URI": mlflow_url,
            # As the README says: the admin's token from data_dir/admin-token, else the bootstrap one.
            "FLIGHTLINE_TOKEN": admin_token(app),
        }
        for run in (1, 2):
            outputs = []
            for index, code in enumerate(python_blocks):
                script = tmp_path / f"quickstart_{index}.py"
                script.write_text(code)
                done = subprocess.run(
                    [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
                )
                assert done.returncode == 0, f"run {run}, block {index}:\n{done.stderr[-3000:]}"
                outputs.append(done.stdout)
            plain, from_mlflow = outputs
            assert plain.splitlines()[0].startswith("ready onnx ")
            # MLflow itself prints where the run is (two lines, shown in the README as well).
            lines = [line for line in from_mlflow.splitlines() if not line.startswith(("🏃", "🧪"))]
            assert lines[0] == "ready sklearn onnx sklearn", from_mlflow
            assert "out.predictions" in lines[1] and len(lines) == 5
            print(from_mlflow)  # what the README shows (pytest -s)
            over_flight = run_node_block(app, tmp_path, env)
            *rows, summary = [json.loads(line) for line in over_flight.splitlines()]
            assert [row["out.predictions"] for row in rows] == [1, 0], over_flight
            assert summary["rows"] == 2 and summary["answered_by"].startswith("revision=1;variant=primary")


def run_node_block(app: App, folder: Path, env: dict[str, str]) -> str:
    """The "From another language" block, but for its `npm ci` (.ci/setup ran it; running it again here
    would replace node_modules under the other tests' feet), in `folder`, against the test server."""
    (block,) = blocks(section("From another language, over Flight"), "bash")
    client = str(README.parent / "tests" / "clients" / "node")
    lines = [line for line in block.strip().splitlines() if not line.startswith("npm ci ")]
    script = "set -e\n" + "\n".join(lines).replace("tests/clients/node", client)
    script = script.replace("127.0.0.1:50051", app.grpc_address)
    done = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
