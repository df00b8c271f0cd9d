"""Issue 10's cells: a Hugging Face text-classification pipeline (a tiny BERT built offline by
tests/support/hf_models.py in the hf environment) through the service against the same pipeline
in-process, with and without adaptive batching, at 1 and 32 concurrent 1-row clients.

The in-process cells run in the hf environment's interpreter (`hf_inprocess.py`): 1-row pipeline calls,
and 32-row calls (batch_size 32), the best any batching can do. The service cells are 1-row requests
to the front door, which forwards to the hf runtime server, on a deployment without batching and on
one with `batching {max_batch_rows: 32, max_delay_ms: 5}`. Every client's answer is checked against
its row's scores computed in-process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import clients
from bench.context import RunContext
from bench.flightline_server import Batching, NotInThisBuild, start_server
from bench.measure import Cell
from bench.models import BenchModel
from bench.paths.serving import Session, drive, seconds

MODEL = "T"  # the tiny BERT text classifier
TASK = "text-classification"
IN_PROCESS = "hf-in-process"
UNBATCHED = "hf-front-door"
BATCHED = "hf-front-door-batched"
CLIENTS = (1, 32)
BATCHING = Batching(max_batch_rows=32, max_delay_ms=5)
ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "tests" / "support" / "hf_models.py"
IN_PROCESS_SCRIPT = Path(__file__).resolve().parent / "hf_inprocess.py"
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    "and",
    "looked",
    "at",
    "a",
    "dog",
    "while",
    "models",
    "served",
    "answers",
    "over",
    "flight",
]


def sentences(count: int) -> list[str]:
    """`count` different sentences of 4 to 15 words."""
    rng = np.random.default_rng(10)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 16)))) + "." for _ in range(count)]


def hf_python() -> Path | None:
    from flightline.server.hosting.environments import FAMILIES, Environments

    env = Environments().lookup(FAMILIES["hf"])
    return None if env is None else env.python


def run(models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    print("== model T (hf text-classification, tiny BERT)", flush=True)
    python = hf_python()
    if python is None:
        note = "skipped: the hf environment is not built (flightline runtimes install hf)"
        print(f"  {note}", flush=True)
        return [Cell.skipped(MODEL, IN_PROCESS, 1, note)]
    folder = ctx.work_dir / "models" / "hf"
    subprocess.run([str(python), str(BUILDER), str(folder), TASK], check=True, capture_output=True)
    texts = sentences(max(CLIENTS))
    timed, _ = seconds(ctx)
    measured = json.loads(
        subprocess.run(
            [str(python), str(IN_PROCESS_SCRIPT), str(folder / TASK), json.dumps(texts), str(timed)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    cells = [
        Cell(MODEL, IN_PROCESS, rows, measured[str(rows)]["requests"], measured[str(rows)]["rows_per_s"],
             measured[str(rows)]["p50_ms"], measured[str(rows)]["p99_ms"],
             f"pipeline calls of {rows} row(s) (batch_size {rows}) in the hf environment")
        for rows in (1, 32)
    ]  # fmt: skip
    for cell in cells:
        print(f"  {MODEL} {cell.path:<26} {cell.rows} rows: {cell.rows_per_s:,.0f} rows/s", flush=True)
    scores = np.array(measured["scores"])  # per row, alone: (rows, 2)
    schema = pa.schema([("inputs", pa.string())])
    requests = tuple(
        clients.ipc_batch(pa.RecordBatch.from_arrays([pa.array([text])], schema=schema)) for text in texts
    )
    expected = tuple(scores[i : i + 1] for i in range(len(texts)))
    server = start_server(ctx.processes, ctx.work_dir / "hf", "flightline-hf")
    try:
        with Session(server) as deployer:
            version = deployer.upload(folder / f"{TASK}.zip", "bench-hf", f"hugging-face-{TASK}")
            deployments = [
                ("unbatched", UNBATCHED, deployer.deploy("bench-hf", version.model_id), "unbatched")
            ]
            try:
                batched = deployer.deploy("bench-hf-batched", version.model_id, BATCHING)
                note = f"max_batch_rows {BATCHING.max_batch_rows}, max_delay_ms {BATCHING.max_delay_ms}"
                deployments.append(("batched", BATCHED, batched, note))
            except NotInThisBuild as missing:
                cells.append(Cell.skipped(MODEL, BATCHED, 1, f"not available in this build: {missing}"))
            for _, path, deployment, note in deployments:
                for count in CLIENTS:
                    cells.append(
                        drive(
                            ctx,
                            MODEL,
                            f"{path}-{count}",
                            deployment.flight_location,
                            deployment.name,
                            requests[:count],
                            expected[:count],
                            "score",
                            f"{count} client(s), 1 row; {note}",
                        )
                    )
    finally:
        ctx.processes.stop(server.process)
    return cells
