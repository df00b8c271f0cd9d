"""The seed's way: JSON records and a base64 Arrow schema over HTTP, the baseline Flightline must beat.

The request body is encoded once per batch size, outside the timing: timed is the HTTP round trip,
the server's decode/infer/encode, and parsing the JSON answer."""

from __future__ import annotations

import base64
import json
import sys

import numpy as np

from bench.context import RunContext
from bench.http_client import KeepAliveClient
from bench.measure import Call, Cell, Check, measure_sizes
from bench.models import BenchModel
from bench.tensors import input_schema

NAME = "json-http"


def run(model: BenchModel, ctx: RunContext) -> list[Cell]:
    server = ctx.processes.start(
        f"json-http-{model.key}", [sys.executable, "-m", "bench.paths.json_http_server", str(model.onnx_path)]
    )
    try:
        port = int(server.wait_for_line("READY ", timeout=60).split()[1])
        schema = base64.b64encode(
            input_schema(model.input_name, model.width).serialize().to_pybytes()
        ).decode()
        with KeepAliveClient(port) as client:

            def prepare(rows: int) -> tuple[Call, Check]:
                records = [{model.input_name: row} for row in model.inputs(rows).tolist()]
                body = json.dumps({"schema": schema, "records": records}).encode()
                del records

                def check(result: object) -> None:
                    assert isinstance(result, list)
                    key = f"out.{model.primary_output}"
                    ctx.check_close(
                        model, rows, np.array([record[key] for record in result], dtype=np.float32)
                    )

                return lambda: json.loads(client.post_json("/", body)), check

            return measure_sizes(model.key, NAME, ctx.sizes, ctx.budget, prepare)
    finally:
        ctx.processes.stop(server)
