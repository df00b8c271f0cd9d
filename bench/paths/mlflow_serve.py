"""`mlflow models serve` (default settings, --env-manager local) serving model A's sklearn estimator.

Requests use MLflow's `{"inputs": [[...], ...]}` JSON, encoded once per batch size outside the timing."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np

from bench.context import RunContext
from bench.http_client import KeepAliveClient
from bench.measure import Call, Cell, Check, measure_sizes
from bench.models import BenchModel
from bench.procs import free_port

NAME = "mlflow-rest"


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    import mlflow.sklearn

    if model.sklearn_pickle is None:
        return [Cell.skipped(model.key, NAME, rows, "no sklearn model") for rows in ctx.sizes]
    model_dir = ctx.work_dir / f"mlflow-model-{model.key}"
    # MLflow's default (skops) format asks to name the estimator's non-default types as trusted.
    trusted = ["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"]
    mlflow.sklearn.save_model(
        pickle.loads(model.sklearn_pickle.read_bytes()), str(model_dir), skops_trusted_types=trusted
    )
    port = free_port()
    # `python -m mlflow`, not the `mlflow` script (its shebang may name another interpreter); the
    # uvicorn it starts is found on the PATH Processes.start puts this environment first on.
    server = ctx.processes.start(
        f"mlflow-serve-{model.key}",
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            str(model_dir),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
    )
    try:
        server.wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        with KeepAliveClient(port) as client:

            def prepare(rows: int) -> tuple[Call, Check]:
                body = json.dumps({"inputs": model.inputs(rows).tolist()}).encode()

                def check(result: object) -> None:
                    assert isinstance(result, dict)
                    ctx.check_labels(model, rows, np.asarray(result["predictions"]))

                return lambda: json.loads(client.post_json("/invocations", body)), check

            return measure_sizes(model.key, NAME, ctx.sizes, ctx.budget, prepare)
    finally:
        ctx.processes.stop(server)
