"""Routes: what the front door runs for each deployment name.

A route is an ordered list of steps, the raw outputs of one feeding the next. A step runs either in the
front door's own process (`LocalStep`, for native runtimes: no second hop) or in a supervised runtime
server (`RemoteStep`, reached over one long-lived Flight exchange per client stream).

A deployment is `Served` by a primary route and optionally a canary route that gets a percentage of new
streams (per stream, so one stream's answers all come from one version) and a shadow that requests are
mirrored to (`shadow.py`). The router swaps a deployment's `Served` in one assignment: a stream holds
the Route it started on until it ends, and `Route.usage` tells when the last such stream is gone."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes.base import InvalidInput
from flightline.runtimes.flight_service import SEE_LOG, runtime_client
from flightline.runtimes.host import Host, ModelOutputError
from flightline.runtimes.params import params_metadata
from flightline.runtimes.server import remote_error_message
from flightline.server.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

# Clients per remote step: enough connections that concurrent streams do not queue on one socket.
POOL_SIZE: Final = 4
SCHEMAS_TIMEOUT: Final = 30.0  # seconds; a runtime that is up answers at once
# A restarted runtime comes back on the same port within a second or two; gRPC's default reconnect
# backoff (up to 2 minutes) would keep failing fast long after that.
CLIENT_OPTIONS: Final = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class StepFailed(Exception):
    """A runtime failed a batch for a reason that is not the client's (its model raised, bad outputs).
    `public` is what a client may read (no paths, no model text); the cause holds the detail, for the log."""

    def __init__(self, public: str) -> None:
        super().__init__(public)
        self.public = public


class StepStream(ABC):
    """One step's side of one client stream."""

    @abstractmethod
    def run(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        """The step's raw outputs for `batch`, with the request's parameters (`runtimes/params.py`) when it
        sent some. Raises InvalidInput for bad data, Unavailable when the
        runtime cannot be reached, StepFailed when the model failed."""

    @abstractmethod
    def close(self) -> None: ...


class Step(ABC):
    input_schema: pa.Schema
    output_schema: pa.Schema  # raw outputs; empty when only known per batch (open schema)
    location: str | None  # the runtime server clients may also reach directly

    @abstractmethod
    def open(self) -> StepStream:
        """Starts serving one client stream."""


class LocalStep(Step):
    """Runs a runtime inside the front door process. `location` may name a runtime server that serves
    the same model, for clients that want to skip the front door."""

    def __init__(self, host: Host, location: str | None = None) -> None:
        self.host = host
        self.input_schema = host.input_schema
        self.output_schema = host.output_schema
        self.location = location
        host.runtime.warm_up()  # the first client batch should not pay for lazy initialisation

    def open(self) -> StepStream:
        return _LocalStream(self.host)


class _LocalStream(StepStream):
    def __init__(self, host: Host) -> None:
        self._host = host

    def run(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        try:
            return self._host.run(batch, params)
        except InvalidInput:  # the client's data breaks the rules; any other error is the model's
            raise
        except ModelOutputError as error:  # our own words about the model's contract
            raise StepFailed(str(error)) from error
        except Exception as error:  # the model's own message may hold anything: the log gets it
            raise StepFailed("the model failed") from error

    def close(self) -> None:
        pass


class RemoteStep(Step):
    """Forwards batches to the model `key` on a runtime server, in "raw" mode. A small pool of clients
    (one HTTP/2 connection each) serves every stream, round robin: one connection would serialize the
    framing of every concurrent stream on one socket. Schemas are asked from the runtime unless given."""

    def __init__(
        self,
        location: str,
        key: str,
        *,
        input_schema: pa.Schema | None = None,
        output_schema: pa.Schema | None = None,
        pool_size: int = POOL_SIZE,
        secret: str = "",
    ) -> None:
        self.location = location
        self.key = key
        self.secret = secret  # what the runtime server demands (hosting: Backend.secret)
        self.descriptor = flight.FlightDescriptor.for_path(key, "raw")
        self._lock = threading.Lock()
        self._clients: list[flight.FlightClient | None] = [None] * max(1, pool_size)
        self._next = 0
        if input_schema is None or output_schema is None:
            asked_input, asked_output = self._ask_schemas()
            input_schema = asked_input if input_schema is None else input_schema
            output_schema = asked_output if output_schema is None else output_schema
        self.input_schema = input_schema
        self.output_schema = output_schema

    def client(self) -> flight.FlightClient:
        with self._lock:
            slot = self._next % len(self._clients)
            self._next += 1
            client = self._clients[slot]
            if client is None:
                client = self._clients[slot] = runtime_client(
                    self.location or "", self.secret, generic_options=CLIENT_OPTIONS
                )
            return client

    def reset(self, client: flight.FlightClient) -> None:
        """Drops a client that saw the runtime go away, so the next stream dials afresh. Not closed
        here: other streams may still hold it; it closes when the last one lets go."""
        with self._lock:
            self._clients = [None if c is client else c for c in self._clients]

    def open(self) -> StepStream:
        return _RemoteStream(self)

    def _ask_schemas(self) -> tuple[pa.Schema, pa.Schema]:
        client = self.client()
        try:
            options = flight.FlightCallOptions(timeout=SCHEMAS_TIMEOUT)
            results = list(client.do_action(flight.Action("schemas", self.key.encode()), options))
        except (flight.FlightError, OSError) as error:
            self.reset(client)
            raise Unavailable(
                f"runtime at {self.location} did not report the schemas of {self.key!r}: "
                f"{remote_error_message(error)}"
            ) from error
        input_ipc, output_ipc = (r.body for r in results)
        return pa.ipc.read_schema(input_ipc), pa.ipc.read_schema(output_ipc)


class _RemoteStream(StepStream):
    """One upstream exchange for the life of the client stream, opened at the first batch (its schema
    starts the exchange) and reopened only if a later batch brings another schema."""

    def __init__(self, step: RemoteStep) -> None:
        self._step = step
        self._client: flight.FlightClient | None = None
        self._writer: flight.FlightStreamWriter | None = None
        self._reader: flight.FlightStreamReader | None = None
        self._schema: pa.Schema | None = None

    def run(self, batch: pa.RecordBatch, params: pa.RecordBatch | None = None) -> pa.RecordBatch:
        try:
            if self._writer is None or not batch.schema.equals(self._schema):
                self._reopen(batch.schema)
            assert self._writer is not None and self._reader is not None
            if params is None:
                self._writer.write_batch(batch)
            else:  # the runtime server reads them from the request's app metadata, as the front door did
                self._writer.write_with_metadata(batch, params_metadata(params))
            result = self._reader.read_chunk().data
        except pa.ArrowInvalid as error:  # INVALID_ARGUMENT: the runtime named what is wrong with the data
            self._abandon()
            raise InvalidInput(remote_error_message(error)) from None
        except flight.FlightInternalError as error:  # the runtime's message is short already (RuntimeServer)
            self._abandon()
            raise StepFailed(remote_error_message(error).removesuffix(SEE_LOG)) from error
        except (flight.FlightError, OSError, StopIteration) as error:
            # The stream broke under us: the runtime died or cannot be reached.
            client = self._client
            self._abandon()
            if client is not None:
                self._step.reset(client)
            raise Unavailable(
                f"runtime at {self._step.location} is unavailable: "
                f"{remote_error_message(error) if str(error) else type(error).__name__}"
            ) from error
        if result is None:
            raise StepFailed("the runtime answered with a metadata-only message instead of a batch")
        return result

    def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if writer is None or reader is None:
            return
        try:
            writer.done_writing()
            reader.read_all()  # the runtime ends its side once it has seen ours end
            writer.close()
        except (pa.ArrowException, OSError):
            reader.cancel()

    def _reopen(self, schema: pa.Schema) -> None:
        self.close()
        self._client = self._step.client()
        self._writer, self._reader = self._client.do_exchange(self._step.descriptor)
        self._writer.begin(schema)
        self._schema = schema

    def _abandon(self) -> None:
        """Ends a broken upstream exchange without waiting for it."""
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if reader is not None:
            reader.cancel()
        if writer is not None:
            # Closed explicitly: a writer dropped after an error logs the error again to stderr.
            with contextlib.suppress(pa.ArrowException, OSError):
                writer.close()


class Usage:
    """How many client streams run on a route, so its runtimes are unloaded only once they ended."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._streams = 0

    def enter(self) -> None:
        with self._idle:
            self._streams += 1

    def exit(self) -> None:
        with self._idle:
            self._streams -= 1
            if self._streams == 0:
                self._idle.notify_all()

    @property
    def streams(self) -> int:
        with self._idle:
            return self._streams

    def wait_idle(self, timeout: float) -> bool:
        """True once no stream runs on the route; False if some still did after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._streams:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True


def route_key(workspace_id: int, name: str) -> str:
    """The name of a deployment's route, and of its Flight descriptor path element: "<workspace>/<name>"
    (deployment names are unique per workspace and never hold a '/')."""
    return f"{workspace_id}/{name}"


def split_key(key: str) -> tuple[int, str]:
    """(workspace id, deployment name) of a route key; ValueError when `key` is not one."""
    workspace, slash, name = key.partition("/")
    if not slash or not workspace.isdigit() or not name:
        raise ValueError(f"not a route key: {key!r}")
    return int(workspace), name


@dataclass(frozen=True)
class Route:
    name: str
    steps: Sequence[Step]
    input_schema: pa.Schema  # the first step's inputs
    output_schema: pa.Schema  # the last step's raw outputs; empty when only known per batch
    # Flight app metadata on every result batch of a stream on this route: which version answered
    # (format in protos/flightline/v1/deployment.proto); b"" for none.
    answered_by: bytes = b""
    usage: Usage = field(default_factory=Usage, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, steps: Sequence[Step], *, answered_by: bytes = b"") -> Route:
        if not steps:
            raise ValueError(f"route {name!r} needs at least one step")
        return cls(name, tuple(steps), steps[0].input_schema, steps[-1].output_schema, answered_by)

    @property
    def locations(self) -> list[str]:
        """The runtime servers of the steps that have one, in step order."""
        return [s.location for s in self.steps if s.location]


def answered_by(revision: int, variant: str, steps: Iterable[tuple[int, int]]) -> bytes:
    """The app metadata of a route's result batches (documented in deployment.proto)."""
    listed = ",".join(f"{model_id}:{version}" for model_id, version in steps)
    return f"revision={revision};variant={variant};steps={listed}".encode()


class Mirror(Protocol):
    """Where the front door mirrors a stream's batches and answers (`shadow.Shadow`); never blocks."""

    def offer(self, batch: pa.RecordBatch, answer: pa.RecordBatch) -> None: ...


@dataclass(frozen=True)
class Served:
    """What one deployment name serves: the primary route, optionally a canary route that gets
    `canary_percent` percent of new streams, and optionally a shadow that gets a copy of every batch."""

    primary: Route
    canary: Route | None = None
    canary_percent: int = 0
    shadow: Mirror | None = None
    _streams: Iterable[int] = field(default_factory=itertools.count, compare=False, repr=False)

    def pick(self) -> Route:
        """The route of a new stream. Stream n goes to the canary when floor((n+1)p/100) > floor(np/100):
        exactly p of every 100 consecutive streams, spread evenly, with no randomness to explain."""
        if self.canary is None or self.canary_percent <= 0:
            return self.primary
        if self.canary_percent >= 100:
            return self.canary
        n = next(self._streams)  # type: ignore[call-overload]  # itertools.count: atomic under the GIL
        p = self.canary_percent
        return self.canary if (n + 1) * p // 100 > n * p // 100 else self.primary

    @property
    def routes(self) -> list[Route]:
        return [self.primary] if self.canary is None else [self.primary, self.canary]


class Router:
    """Deployment name -> what it serves; read by every front door stream, changed by deploy/undeploy and
    swapped whole by updates. A name that is `expect`ed (a restarting server has not routed it yet) is
    UNAVAILABLE, so clients retry, rather than NOT_FOUND."""

    def __init__(self) -> None:
        self._served: dict[str, Served] = {}
        self._expected: set[str] = set()
        self._lock = threading.Lock()

    def put(
        self,
        route: Route,
        *,
        canary: Route | None = None,
        canary_percent: int = 0,
        shadow: Mirror | None = None,
    ) -> Served | None:
        """Serves `route` (and its canary and shadow) under its name from the next stream on; returns
        what served before. Streams already running keep the route they hold."""
        served = Served(route, canary, canary_percent if canary is not None else 0, shadow)
        with self._lock:
            before = self._served.get(route.name)
            self._served[route.name] = served
            self._expected.discard(route.name)
            return before

    def remove(self, name: str) -> Route | None:
        """Takes a route out of service; streams already running on it finish on their own."""
        with self._lock:
            self._expected.discard(name)
            served = self._served.pop(name, None)
        return None if served is None else served.primary

    def expect(self, names: Iterable[str]) -> None:
        """Names that will be routed soon (a restart resuming them): UNAVAILABLE until put or forgotten."""
        with self._lock:
            self._expected.update(n for n in names if n not in self._served)

    def forget(self, name: str) -> None:
        """An expected name will not come (its deployment failed): NOT_FOUND from now on."""
        with self._lock:
            self._expected.discard(name)

    def expected(self) -> list[str]:
        with self._lock:
            return sorted(self._expected)

    @property
    def ready(self) -> bool:
        """True when no expected name is waiting for its route."""
        with self._lock:
            return not self._expected

    def served(self, name: str) -> Served:
        with self._lock:
            served = self._served.get(name)
            expected = served is None and name in self._expected
        if served is None:
            bare = name.rpartition("/")[2]  # the route key's workspace is not the client's word
            if expected:
                raise Unavailable(f"deployment {bare!r} is starting; retry")
            raise NotFound(f"deployment {bare!r} not found")
        return served

    def get(self, name: str) -> Route:
        return self.served(name).primary

    def named(self, name: str) -> list[str]:
        """The route keys of the deployments called `name`, in any workspace (expected ones too, so a bare
        name a restart has not routed yet is UNAVAILABLE, not NOT_FOUND)."""
        suffix = "/" + name
        with self._lock:
            return sorted(k for k in self._served.keys() | self._expected if k.endswith(suffix))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._served)
