"""The seed's way: JSON records plus a base64 Arrow schema over plain HTTP/1.1 (keep-alive).

POST / with {"schema": <base64 IPC schema>, "records": [{"<input>": [floats...]}, ...]} answers
[{"out.<output>": value, ...}, ...]. Run as `python -m bench.paths.json_http_server MODEL.onnx`;
prints `READY <port>` when serving."""

from __future__ import annotations

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa

from bench.ort_options import session
from bench.tensors import to_matrix


class Model:
    def __init__(self, model_path: str) -> None:
        self.session = session(model_path)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]

    def infer_json(self, body: bytes) -> bytes:
        request = json.loads(body)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(request["schema"])))
        table = pa.Table.from_pylist(request["records"], schema=schema)
        values = self.session.run(self.outputs, {self.input: to_matrix(table.column(0))})
        columns = {
            f"out.{name}": np.asarray(value).tolist()
            for name, value in zip(self.outputs, values, strict=True)
        }
        records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        return json.dumps(records).encode()


def handler_for(model: Model) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                payload, status = model.infer_json(body), 200
            except (ValueError, KeyError, pa.ArrowException) as error:
                payload, status = json.dumps({"error": str(error)}).encode(), 400
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(Model(sys.argv[1])))
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
