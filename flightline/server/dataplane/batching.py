"""Adaptive batching: concurrent small request batches bound for one remote step become one model call.

Per deployment, `max_batch_rows` and `max_delay_ms` (0 = off, the default). A `BatchingStep` wraps a
step; every client stream hands its batches to one dispatcher thread, which takes the oldest waiting
request, then waits up to `max_delay_ms` for more requests with the same schema until `max_batch_rows`
would be exceeded, concatenates them, makes one call on its own upstream stream and slices the result
back to each request, in order. Requests arriving while a call runs are merged into the next one, so
under load batches fill without waiting. A request of `max_batch_rows` rows or more gains nothing from
merging: it runs alone at once.

Errors in a merged call: the client's data (InvalidInput) and model failures (StepFailed) must be told
to the request that caused them, not to its neighbours, so each request of the failed call is re-run
alone and gets its own answer or error. An unreachable runtime (Unavailable) fails every request of the
call: re-running would only multiply the wait."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa

from flightline.runtimes.base import InvalidInput
from flightline.server.dataplane.routes import Step, StepFailed, StepStream

MAX_DELAY_MS: Final = 1000  # a longer wait is a misconfiguration, not batching
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batching:
    max_batch_rows: int = 256
    max_delay_ms: int = 0  # 0 = off

    @property
    def enabled(self) -> bool:
        return self.max_delay_ms > 0 and self.max_batch_rows > 1


@dataclass
class _Request:
    batch: pa.RecordBatch
    done: threading.Event = field(default_factory=threading.Event)
    result: pa.RecordBatch | None = None
    error: BaseException | None = None


class BatchingStep(Step):
    def __init__(self, step: Step, batching: Batching) -> None:
        self.step = step
        self.batching = batching
        self.input_schema = step.input_schema
        self.output_schema = step.output_schema
        self.location = step.location
        self._pending: deque[_Request] = deque()
        self._arrived = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    def open(self) -> StepStream:
        return _BatchedStream(self)

    def close(self) -> None:
        """Stops the dispatcher (the route was removed); waiting requests fail as unavailable."""
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()

    def submit(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        request = _Request(batch)
        with self._arrived:
            if self._closed:
                raise StepFailed("the deployment is being removed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._dispatch, daemon=True, name="batcher")
                self._worker.start()
            self._pending.append(request)
            self._arrived.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _dispatch(self) -> None:
        upstream = self.step.open()
        try:
            while True:
                merged = self._collect()
                if merged is None:
                    return
                self._call(upstream, merged)
        finally:
            upstream.close()

    def _collect(self) -> list[_Request] | None:
        """The next requests to merge: the oldest, then same-schema ones arriving within the delay."""
        limit = self.batching.max_batch_rows
        with self._arrived:
            while not self._pending and not self._closed:
                self._arrived.wait()
            if self._closed:
                for request in self._pending:
                    request.error = StepFailed("the deployment is being removed")
                    request.done.set()
                return None
            first = self._pending.popleft()
            taken, rows = [first], first.batch.num_rows
            deadline = time.monotonic() + self.batching.max_delay_ms / 1000
            while rows < limit:
                for request in list(self._pending):
                    if rows + request.batch.num_rows > limit:
                        break
                    if request.batch.schema.equals(first.batch.schema):
                        self._pending.remove(request)
                        taken.append(request)
                        rows += request.batch.num_rows
                remaining = deadline - time.monotonic()
                if rows >= limit or remaining <= 0 or self._closed:
                    break
                self._arrived.wait(remaining)
            return taken

    @staticmethod
    def _call(upstream: StepStream, requests: list[_Request]) -> None:
        if len(requests) == 1:
            BatchingStep._alone(upstream, requests[0])
            return
        try:
            result = upstream.run(pa.concat_batches([r.batch for r in requests]))
        except (InvalidInput, StepFailed):
            for request in requests:  # find whose request it was: each one alone
                BatchingStep._alone(upstream, request)
            return
        except BaseException as error:  # Unavailable and the unexpected: the same for every request
            for request in requests:
                request.error = error
                request.done.set()
            return
        offset = 0
        for request in requests:
            request.result = result.slice(offset, request.batch.num_rows)
            offset += request.batch.num_rows
            request.done.set()

    @staticmethod
    def _alone(upstream: StepStream, request: _Request) -> None:
        try:
            request.result = upstream.run(request.batch)
        except BaseException as error:
            request.error = error
        request.done.set()


class _BatchedStream(StepStream):
    def __init__(self, step: BatchingStep) -> None:
        self._step = step
        self._direct: StepStream | None = None  # for requests too large to gain from merging

    def run(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        # A request with parameters is never merged with others, which may have other parameters.
        if params is not None or batch.num_rows >= self._step.batching.max_batch_rows:
            if self._direct is None:
                self._direct = self._step.step.open()
            return self._direct.run(batch, params)
        return self._step.submit(batch)

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
