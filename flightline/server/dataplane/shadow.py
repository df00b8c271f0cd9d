"""Shadow traffic: a deployment's request batches mirrored to another pipeline whose answers are compared
with the deployment's own, recorded, and never returned.

The front door hands each (request batch, answer) to `Shadow.offer`, which only appends to a bounded
queue: when the queue is full (the shadow is slower than the traffic) the batch is dropped and counted,
so a slow or failing shadow never slows or fails the deployment's answers. One thread of its own runs
the shadow's route on one long-lived set of step streams, compares, and records counts, latency and
disagreeing rows (`ShadowStats`, and the `flightline_shadow_*` metrics through `record`). Batches are
Arrow buffers shared with the stream, not copies."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flightline.server.dataplane.routes import Route, StepStream

QUEUE_BATCHES: Final = 64  # enough to ride over a shadow's short hiccup, small enough to bound memory
RTOL: Final = 1e-5
ATOL: Final = 1e-6
log = logging.getLogger(__name__)

# (deployment, outcome "ok" | "failed" | "dropped", seconds, rows, disagreeing rows)
Record = Callable[[str, str, float, int, int], None]


@dataclass(frozen=True)
class ShadowStats:
    batches: int = 0
    rows: int = 0
    failed: int = 0
    dropped: int = 0
    disagreeing_rows: int = 0
    mean_latency_ms: float = 0.0
    max_latency_ms: float = 0.0


class Shadow:
    def __init__(self, deployment: str, route: Route, record: Record, *, queue_batches: int = QUEUE_BATCHES):
        self.deployment = deployment
        self.route = route
        self._record = record
        self._queue: queue.Queue[tuple[pa.RecordBatch, pa.RecordBatch] | None] = queue.Queue(queue_batches)
        self._lock = threading.Lock()
        self._batches = self._rows = self._failed = self._dropped = self._disagreeing = 0
        self._seconds = self._max_seconds = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"shadow-{deployment}", daemon=True)
        self._thread.start()

    def offer(self, batch: pa.RecordBatch, answer: pa.RecordBatch) -> None:
        """Mirrors one batch and the deployment's answer to it; never blocks, never raises."""
        if self._closed:
            return
        try:
            self._queue.put_nowait((batch, answer))
        except queue.Full:
            with self._lock:
                self._dropped += 1
            self._record(self.deployment, "dropped", 0.0, batch.num_rows, 0)

    def stats(self) -> ShadowStats:
        with self._lock:
            done = self._batches
            return ShadowStats(
                batches=done,
                rows=self._rows,
                failed=self._failed,
                dropped=self._dropped,
                disagreeing_rows=self._disagreeing,
                mean_latency_ms=self._seconds * 1000 / done if done else 0.0,
                max_latency_ms=self._max_seconds * 1000,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stops mirroring; the thread ends after the batch it runs (not waited for beyond `timeout`)."""
        self._closed = True
        while True:  # make room for the sentinel: batches still queued are not worth running any more
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join(timeout)

    def _run(self) -> None:
        streams: list[StepStream] | None = None
        self.route.usage.enter()  # the shadow's runtimes stay loaded while it runs
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                batch, answer = item
                if streams is None:
                    streams = [step.open() for step in self.route.steps]
                started = time.perf_counter()
                try:
                    data = batch
                    for stream in streams:
                        data = stream.run(data)
                except Exception as error:  # anything the shadow does wrong is its own business
                    seconds = time.perf_counter() - started
                    log.info(
                        "shadow of %s failed a batch: %s: %s", self.deployment, type(error).__name__, error
                    )
                    for stream in streams:
                        stream.close()
                    streams = None  # a broken upstream is reopened for the next batch
                    self._count(batch.num_rows, seconds, failed=True, disagreeing=0)
                    continue
                seconds = time.perf_counter() - started
                self._count(batch.num_rows, seconds, failed=False, disagreeing=disagreeing_rows(answer, data))
        finally:
            for stream in streams or ():
                stream.close()
            self.route.usage.exit()

    def _count(self, rows: int, seconds: float, *, failed: bool, disagreeing: int) -> None:
        with self._lock:
            self._batches += 1
            self._rows += rows
            self._failed += failed
            self._disagreeing += disagreeing
            self._seconds += seconds
            self._max_seconds = max(self._max_seconds, seconds)
        self._record(self.deployment, "failed" if failed else "ok", seconds, rows, disagreeing)


def disagreeing_rows(primary: pa.RecordBatch, shadow: pa.RecordBatch) -> int:
    """Rows whose answers differ: numbers (and tensors of them) beyond RTOL/ATOL, anything else unequal.
    Answers of another shape (other columns, other row count) differ in every row."""
    rows = int(primary.num_rows)
    if shadow.num_rows != rows or shadow.schema.names != primary.schema.names:
        return rows
    differs = np.zeros(rows, dtype=bool)
    for a, b in zip(primary.columns, shadow.columns, strict=True):
        differs |= _column_differs(a, b)
    return int(differs.sum())


def _column_differs(a: pa.Array, b: pa.Array) -> np.ndarray:
    rows = len(a)
    left, right = _matrix(a), _matrix(b)
    if left is not None and right is not None:
        if left.shape != right.shape:
            return np.ones(rows, dtype=bool)
        close = np.isclose(left, right, rtol=RTOL, atol=ATOL, equal_nan=True)
        return np.asarray(~close.all(axis=1))
    if a.type != b.type:
        return np.ones(rows, dtype=bool)
    try:
        same = pc.fill_null(pc.equal(a, b), False)
        return np.asarray(~same.to_numpy(zero_copy_only=False))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: row by row (shadow thread only)
        return np.array([a[i] != b[i] for i in range(rows)], dtype=bool)


def _matrix(column: pa.Array) -> np.ndarray | None:
    """A numeric column (or fixed-size tensors of numbers) as a (rows, values per row) float array."""
    rows = len(column)
    values: pa.Array = column
    while pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        return None
    if values.null_count:
        return None
    array: np.ndarray = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return array.reshape(rows, -1) if rows else array.reshape(0, 0)
