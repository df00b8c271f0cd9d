"""Many concurrent clients, spread over several client processes, so the client is not the bottleneck.

Each client process (multiprocessing, spawn context: a fresh interpreter, no state forked from the
parent) opens one FlightClient and one `do_exchange` stream per client it drives, each stream served
by its own thread that sends one request, waits for its answer, and sends the next (closed loop).
Every stream warms up and checks its first answer; then all processes wait on one barrier with the
parent, run for the same seconds, check their last answers and report rows and per-request
latencies. The parent aggregates: rows/s over the whole span (first start to last answer, on the
system-wide monotonic clock), p50 and p99 over every request of every client.

Each client sends its own rows (client i: row i of the inputs), and answers are compared with what
the model gives for exactly those rows, so a server that merged requests (adaptive batching) and
sliced the results back to the wrong caller would fail the check."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from bench.tensors import output_matrix

BARRIER_TIMEOUT = 180.0  # seconds for every client process to start, connect and warm up
DEFAULT_PROCESSES = 4


@dataclass(frozen=True)
class Load:
    """What every client process needs; picklable (sent to spawned processes)."""

    location: str
    path: tuple[str, ...]  # the Flight descriptor path
    requests: tuple[bytes, ...]  # per client: its request, a record batch as Arrow IPC stream bytes
    expected: tuple[np.ndarray, ...]  # per client: the output its request must get back
    output: str  # the output column compared
    seconds: float  # timed part
    warmup_seconds: float
    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass
class Report:
    """One client process's result."""

    rows: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Aggregate:
    clients: int
    processes: int
    requests: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float


def ipc_batch(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def read_batch(data: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()


def run(load: Load, processes: int = DEFAULT_PROCESSES) -> Aggregate:
    """Drives len(load.requests) concurrent clients from `processes` client processes."""
    clients = len(load.requests)
    processes = max(1, min(processes, clients))
    context = mp.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    results: mp.Queue[Report] = context.Queue()
    shares = [list(range(clients))[index::processes] for index in range(processes)]
    workers = [
        context.Process(target=client_process, args=(load, share, barrier, results), daemon=True)
        for share in shares
    ]
    for worker in workers:
        worker.start()
    try:
        # A broken barrier: a process failed before the start, and its report says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(BARRIER_TIMEOUT)
        reports = [results.get(timeout=BARRIER_TIMEOUT + load.seconds * 2 + 60) for _ in workers]
    except queue.Empty:
        raise RuntimeError("a client process reported nothing (crashed?)") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    errors = [error for report in reports for error in report.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]}")
    latencies = np.asarray([n for report in reports for n in report.latencies_ns], dtype=np.float64) / 1e6
    span_s = (max(r.end_ns for r in reports) - min(r.start_ns for r in reports)) / 1e9
    return Aggregate(
        clients,
        processes,
        len(latencies),
        sum(r.rows for r in reports) / span_s,
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 99)),
    )


def client_process(load: Load, share: list[int], barrier: Barrier, results: mp.Queue[Report]) -> None:
    """Entry point of one client process: one FlightClient, one stream and thread per client in `share`."""
    report = Report()
    try:
        from bench.flightline_server import flight_middleware

        connection = flight.connect(load.location, middleware=flight_middleware())
        connection.wait_for_available(timeout=60)
        streams = [ClientStream(connection, load, index) for index in share]
    except Exception as error:
        report.errors.append(f"connecting: {type(error).__name__}: {error}")
        barrier.abort()
        results.put(report)
        return
    go = threading.Event()
    threads = [threading.Thread(target=stream.drive, args=(go,), daemon=True) for stream in streams]
    for thread in threads:
        thread.start()
    for stream in streams:
        stream.warm.wait()
    try:
        barrier.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        report.errors.append("another client process failed before the start")
    report.start_ns = time.monotonic_ns()
    for stream in streams:
        stream.deadline_ns = report.start_ns + int(load.seconds * 1e9)
    go.set()
    for thread in threads:
        thread.join()
    for stream in streams:
        stream.close()
        report.rows += stream.rows
        report.latencies_ns += stream.latencies_ns
        report.end_ns = max(report.end_ns, stream.last_ns)
        report.errors += stream.errors
    connection.close()
    results.put(report)


class ClientStream:
    """One client: a long-lived exchange on which it sends its request and reads the answer, in turn."""

    def __init__(self, connection: flight.FlightClient, load: Load, index: int) -> None:
        self.load = load
        self.index = index
        self.batch = read_batch(load.requests[index])
        self.expected = load.expected[index]
        self.writer, self.reader = connection.do_exchange(flight.FlightDescriptor.for_path(*load.path))
        self.writer.begin(self.batch.schema)
        self.warm = threading.Event()
        self.deadline_ns = 0
        self.rows = 0
        self.latencies_ns: list[int] = []
        self.last_ns = 0
        self.errors: list[str] = []

    def request(self) -> pa.RecordBatch:
        self.writer.write_batch(self.batch)
        answer: pa.RecordBatch = self.reader.read_chunk().data
        if answer.num_rows != self.batch.num_rows:
            raise RuntimeError(f"sent {self.batch.num_rows} rows, got {answer.num_rows}")
        return answer

    def check(self, answer: pa.RecordBatch) -> None:
        actual = output_matrix([answer], self.load.output)
        np.testing.assert_allclose(
            actual.reshape(self.expected.shape), self.expected, rtol=self.load.rtol, atol=self.load.atol
        )

    def drive(self, go: threading.Event) -> None:
        try:
            self.check(self.request())
            warm_end = time.monotonic() + self.load.warmup_seconds
            while time.monotonic() < warm_end:
                self.request()
        except Exception as error:
            self.fail("warming up", error)
        finally:
            self.warm.set()
        go.wait()
        if self.errors:
            return
        try:
            now = time.monotonic_ns()
            answer = None
            while now < self.deadline_ns:
                answer = self.request()
                end = time.monotonic_ns()
                self.latencies_ns.append(end - now)
                self.rows += answer.num_rows
                now = end
            self.last_ns = now
            if answer is not None:
                self.check(answer)  # under full concurrency, where merged batches would show
        except Exception as error:
            self.fail("measuring", error)

    def fail(self, when: str, error: Exception) -> None:
        detail = str(error).splitlines()[0] if str(error) else traceback.format_exc(limit=1)
        self.errors.append(f"client {self.index} {when}: {type(error).__name__}: {detail[:300]}")

    def close(self) -> None:
        try:
            self.writer.done_writing()
            self.reader.read_all()
            self.writer.close()
        except (pa.ArrowException, OSError):
            self.reader.cancel()
