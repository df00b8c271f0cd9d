"""MLServer (default settings, its own venv) serving model A's sklearn estimator over gRPC V2."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np

from bench.context import RunContext
from bench.measure import Cell
from bench.models import BenchModel
from bench.paths.mlserver_venv import ensure_venv
from bench.procs import REPO_ROOT, free_port

NAME = "mlserver-grpc"
MODEL_NAME = "model-a"


def write_repository(model: BenchModel, ctx: RunContext, ports: dict[str, int]) -> None:
    """An MLServer model repository: server settings (loopback ports only) and one sklearn model."""
    assert model.sklearn_pickle is not None
    repo = ctx.work_dir / "mlserver"
    (repo / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    shutil.copy(model.sklearn_pickle, repo / MODEL_NAME / "model.joblib")  # joblib loads plain pickles
    settings = {"host": "127.0.0.1", **ports}
    (repo / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (repo / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings))


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    if model.sklearn_pickle is None:
        return [Cell.skipped(model.key, NAME, rows, "no sklearn model") for rows in ctx.sizes]
    python = ensure_venv()
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    write_repository(model, ctx, ports)
    repo = ctx.work_dir / "mlserver"
    inputs_path, labels_path = ctx.work_dir / "mlserver-inputs.npy", ctx.work_dir / "mlserver-labels.npy"
    largest = max(ctx.sizes)
    np.save(inputs_path, model.inputs(largest))
    np.save(labels_path, ctx.expected(model, largest)["label"])
    server = ctx.processes.start(
        "mlserver", [str(python.with_name("mlserver")), "start", str(repo)], cwd=repo, bin_dir=python.parent
    )
    try:
        server.wait_for_http(
            f"http://127.0.0.1:{ports['http_port']}/v2/models/{MODEL_NAME}/ready", timeout=180
        )
        argv = [
            str(python),
            "-m",
            "bench.paths.mlserver_client",
            "--port",
            str(ports["grpc_port"]),
            "--model",
            MODEL_NAME,
            "--key",
            model.key,
            "--inputs",
            str(inputs_path),
            "--labels",
            str(labels_path),
            "--sizes",
            json.dumps(ctx.sizes),
            "--budget",
            json.dumps(dataclasses.asdict(ctx.budget)),
        ]
        cells: list[Cell] = []
        with subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) as client:
            assert client.stdout is not None
            try:
                for line in client.stdout:
                    if line.startswith("CELL "):
                        cells.append(Cell.from_dict(json.loads(line.removeprefix("CELL "))))
                    else:
                        print(line, end="", flush=True)
            except BaseException:
                client.kill()
                raise
        if client.returncode != 0:
            raise RuntimeError(f"MLServer client failed ({client.returncode}); {server.log_tail()}")
        return cells
    finally:
        ctx.processes.stop(server)
