"""Routes: what the front door runs for each deployment name.

A route is an ordered list of steps, the raw outputs of one feeding the next. A step runs either in the
front door's own process (`LocalStep`, for native runtimes: no second hop) or in a supervised runtime
server (`RemoteStep`, reached over one long-lived Flight exchange per client stream)."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes.base import InvalidInput
from flightline.runtimes.flight_service import SEE_LOG, runtime_client
from flightline.runtimes.host import Host, ModelOutputError
from flightline.runtimes.params import params_metadata
from flightline.runtimes.server import remote_error_message
from flightline.server.errors import NotFound, Unavailable

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

    @classmethod
    def of(cls, name: str, steps: Sequence[Step]) -> Route:
        if not steps:
            raise ValueError(f"route {name!r} needs at least one step")
        return cls(name, tuple(steps), steps[0].input_schema, steps[-1].output_schema)

    @property
    def locations(self) -> list[str]:
        """The runtime servers of the steps that have one, in step order."""
        return [s.location for s in self.steps if s.location]


class Router:
    """Deployment name -> route; read by every front door stream, changed by deploy/undeploy."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()

    def put(self, route: Route) -> None:
        with self._lock:
            self._routes[route.name] = route

    def remove(self, name: str) -> Route | None:
        """Takes a route out of service; streams already running on it finish on their own."""
        with self._lock:
            return self._routes.pop(name, None)

    def get(self, name: str) -> Route:
        with self._lock:
            route = self._routes.get(name)
        if route is None:
            raise NotFound(f"deployment {name.rpartition('/')[2]!r} not found")
        return route

    def named(self, name: str) -> list[str]:
        """The route keys of the deployments called `name`, in any workspace."""
        suffix = "/" + name
        with self._lock:
            return sorted(k for k in self._routes if k.endswith(suffix))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._routes)
