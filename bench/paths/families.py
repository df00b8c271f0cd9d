"""Issue 9's cells, one row per framework family: the model-A-shaped MLP served by Flightline's front
door against the framework run in-process (bench/family_models.py, in the family's environment).

- `TF`: a TensorFlow SavedModel on the native tensorflow runtime (a runtime server);
- `K`: the same weights as a Keras `.keras` file, converted to ONNX (served in the front door);
- `T32`: a scripted TorchScript module with a float32 schema, converted to ONNX;
- `T64`: the same module in float64, which stays on the TorchScript runtime (the guide's float32 rule).

Skipped, saying which command builds it, when a family's environment is not built."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from bench.context import RunContext
from bench.flight_stream import ExchangeStream
from bench.flightline_server import OUTPUTS_MODE, start_server
from bench.measure import Cell, measure_sizes
from bench.models import BenchModel
from bench.paths.serving import Session
from bench.tensors import from_matrix

FRONT_DOOR = "Flightline front door"
IN_PROCESS = "in-process framework"
WIDTH = 29
SCRIPT = Path(__file__).resolve().parent.parent / "family_models.py"
# model key -> (family, artifact, framework, input value type, what serves it)
MODELS = {
    "TF": ("tensorflow", "tf.zip", "tensorflow", pa.float32(), "TensorFlow SavedModel, native"),
    "K": ("tensorflow", "keras.keras", "keras", pa.float32(), "Keras .keras converted to ONNX"),
    "T32": ("torch", "T32.pt", "pytorch", pa.float32(), "TorchScript float32 converted to ONNX"),
    "T64": ("torch", "T64.pt", "pytorch", pa.float64(), "TorchScript float64 on the TorchScript runtime"),
}


def run_cells(_models: list[BenchModel], ctx: RunContext) -> list[Cell]:
    from flightline.server.hosting.environments import FAMILIES, Environments

    environments = Environments()
    out = ctx.work_dir / "families"
    cells: list[Cell] = []
    in_process: dict[str, dict[str, float]] = {}
    for family in ("tensorflow", "torch"):
        env = environments.lookup(FAMILIES[family])
        keys = [key for key, spec in MODELS.items() if spec[0] == family]
        if env is None:
            note = f"skipped: run `flightline runtimes install {family}`"
            cells += [
                Cell.skipped(key, path, rows, note)
                for key in keys
                for path in (IN_PROCESS, FRONT_DOOR)
                for rows in ctx.sizes
            ]
            continue
        done = subprocess.run(
            [str(env.python), str(SCRIPT), family, str(out), ",".join(map(str, ctx.sizes))],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        in_process.update(json.loads(done.stdout.strip().splitlines()[-1]))
    for key, figures in in_process.items():
        for rows, value in figures.items():
            cells.append(Cell(key, IN_PROCESS, int(rows), 0, value, None, None, MODELS[key][4]))
            print(f"  {key} {IN_PROCESS:<24} {int(rows):>7} rows: {value:>13,.0f} rows/s", flush=True)
    if not in_process:
        return cells
    server = start_server(ctx.processes, ctx.work_dir / "families-server", "families")
    with Session(server) as deployer:
        for key in in_process:
            _family, file, framework, value_type, what = MODELS[key]
            schema = pa.schema([pa.field("inputs", pa.list_(value_type, WIDTH))])
            name = f"bench-{key.lower()}"
            version = deployer.upload(out / file, name, framework, input_schema=schema)
            print(f"  {key}: {what}: runtime {version.runtime} ({version.conversion_note})", flush=True)
            deployment = deployer.deploy(name, version.model_id)
            descriptor = flight.FlightDescriptor.for_path(name, OUTPUTS_MODE)
            with ExchangeStream(deployment.flight_location, descriptor, schema) as stream:

                def prepare(
                    rows: int, stream: ExchangeStream = stream, schema: pa.Schema = schema
                ) -> tuple[Callable[[], list[pa.RecordBatch]], Callable[[list[pa.RecordBatch]], None]]:
                    matrix = np.random.default_rng(rows).normal(size=(rows, WIDTH))
                    matrix = matrix.astype(schema.field(0).type.value_type.to_pandas_dtype())
                    batch = pa.RecordBatch.from_arrays(
                        [from_matrix(matrix, schema.field(0).type)], schema=schema
                    )

                    def call() -> list[pa.RecordBatch]:
                        return stream.request([batch])

                    def check(result: list[pa.RecordBatch]) -> None:
                        assert sum(b.num_rows for b in result) == rows

                    return call, check

                cells += measure_sizes(key, FRONT_DOOR, ctx.sizes, ctx.budget, prepare)
    return cells
