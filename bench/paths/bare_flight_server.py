"""The bare reference: a minimal Flight server running one ONNX session in `do_exchange`.

One output batch per input batch, outputs only; nothing else between the wire and the session.
Run as `python -m bench.paths.bare_flight_server MODEL.onnx [INTRA_OP_THREADS]`; prints `READY <port>`
when serving."""

from __future__ import annotations

import sys

import pyarrow.flight as flight

from bench.ort_options import session
from bench.tensors import outputs_batch, to_matrix


class BareServer(flight.FlightServerBase):  # type: ignore[misc]  # pyarrow ships no type stubs
    def __init__(self, model_path: str, intra_op_threads: int) -> None:
        super().__init__("grpc+tcp://127.0.0.1:0")
        self._session = session(model_path, intra_op_threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [output.name for output in self._session.get_outputs()]

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        started = False
        for chunk in reader:
            values = self._session.run(self._outputs, {self._input: to_matrix(chunk.data.column(0))})
            batch = outputs_batch(dict(zip(self._outputs, values, strict=True)))
            if not started:
                writer.begin(batch.schema)
                started = True
            writer.write_batch(batch)


def main() -> None:
    server = BareServer(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f"READY {server.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
