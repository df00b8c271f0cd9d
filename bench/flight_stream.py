"""One long-lived `do_exchange` stream used as a request/response channel.

A request is a list of record batches; its answer is complete once as many rows have come back.
Large requests are written from a sender thread while this thread reads, so the server computes
one batch while the next is on the wire."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa
import pyarrow.flight as flight


class ExchangeStream:
    def __init__(self, location: str, descriptor: flight.FlightDescriptor, schema: pa.Schema) -> None:
        # Imported here: this module is also used without the Flightline server package's bench helpers.
        from bench.flightline_server import flight_middleware

        self._client = flight.FlightClient(location, middleware=flight_middleware())
        self._client.wait_for_available(timeout=30)
        self._writer, self._reader = self._client.do_exchange(descriptor)
        self._writer.begin(schema)
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-sender")

    def request(self, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
        rows = sum(batch.num_rows for batch in batches)
        sending: Future[None] | None = None
        if len(batches) == 1:
            self._writer.write_batch(batches[0])
        else:
            sending = self._sender.submit(self._write_all, batches)
        results: list[pa.RecordBatch] = []
        received = 0
        try:
            while received < rows:
                batch = self._reader.read_chunk().data
                results.append(batch)
                received += batch.num_rows
        finally:
            if sending is not None:
                sending.result()
        if received != rows:
            raise RuntimeError(f"sent {rows} rows, got {received} back")
        return results

    def _write_all(self, batches: list[pa.RecordBatch]) -> None:
        for batch in batches:
            self._writer.write_batch(batch)

    def close(self) -> None:
        try:
            self._writer.done_writing()
            for _ in self._reader:
                pass
        finally:
            self._sender.shutdown()
            self._client.close()

    def __enter__(self) -> ExchangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
