"""The Flight front door: one address for every deployment. Descriptors it accepts (PATH descriptors only),
where `path` is the deployment's `flight_path`, "<workspace id>/<name>" (Deployment.flight_path):

    do_exchange(FlightDescriptor.for_path(path))             -> envelopes: time, in.*, out.*, check_failures
    do_exchange(FlightDescriptor.for_path(path, "envelope")) -> the same
    do_exchange(FlightDescriptor.for_path(path, "outputs"))  -> out.* columns only

The bare deployment name is accepted in place of `path` while it names one deployment the caller can
see (names are unique per workspace only); otherwise INVALID_ARGUMENT asks for the full path.

With an authenticator (always, in a server), every call but the `healthcheck` and `version` actions and
`list_actions` needs credentials (`dataplane/auth.py`); a deployment of a workspace where the caller has
no role is NOT_FOUND, as if it did not exist, and `list_flights` lists only the caller's.

and gets one result batch per request batch on the same stream (a zero-row batch gets a zero-row result).
Each result batch carries Flight app metadata saying which version answered,
`revision=<n>;variant=<primary|canary>;steps=<model_id>:<version>[,...]` (protos/.../deployment.proto).
A stream is given its route when it starts (`Served.pick`: the deployment's steps, or its canary for a
percentage of streams) and keeps it to its end, even if the deployment is updated meanwhile; each batch
and its answer are then offered to the deployment's shadow, if any, which never blocks (`shadow.py`).
The front door runs the route's steps in order and builds the envelope itself from the request batch as
received (no copy), so runtimes send back only their outputs. The "raw" mode is for chaining runtime
servers and is refused here; a descriptor without a deployment name is INVALID_ARGUMENT.

get_flight_info / get_schema on the same descriptors give the result schema. FlightInfo has NO endpoints:
Flight clients must consume every endpoint with do_get, and nothing is served by do_get; inference is
do_exchange on the same descriptor at this server. Runtime servers are not advertised (a deployment's
steps and their locations are in the control plane's Deployment). list_flights gives one FlightInfo per
deployment (descriptor for_path(name), envelope schema, no endpoints).

Each client stream is handled batch by batch on its handler thread: memory stays bounded by the batch
size whatever the request size, and an error surfaces on the batch that caused it. (Reading the client
stream from a helper thread would let a failing batch leave that thread blocked on a call the server
has already finished.) Once the front door is closing, a stream ends at its next batch with UNAVAILABLE.

Errors clients see (short messages only; see `flightline/runtimes/flight_service.py`): NOT_FOUND for an
unknown deployment, UNAVAILABLE for one a restarting server has not routed again yet (retry),
INVALID_ARGUMENT for a bad descriptor or data that breaks the first step's rules (the message names the
column), UNAVAILABLE when a runtime process died (retry once the supervisor restarted
it) or the server is shutting down, INTERNAL "step N of 'name' failed: ...; see the server log" when a
model failed, with the detail in the server log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flightline import __version__
from flightline.runtimes import flight_service, params
from flightline.runtimes.base import InvalidInput
from flightline.runtimes.envelope import envelope, envelope_schema
from flightline.runtimes.flight_service import SEE_LOG, Fault, FlightService, InvalidArgument, Unimplemented
from flightline.runtimes.host import MODES as ALL_MODES
from flightline.runtimes.rules import is_open
from flightline.runtimes.server import conform
from flightline.server.access.authn import Authenticator, Identity
from flightline.server.access.quotas import CallerLimits
from flightline.server.dataplane import auth
from flightline.server.dataplane.routes import Route, Router, Served, StepFailed, StepStream, split_key
from flightline.server.errors import NotFound, Unavailable
from flightline.server.observability import DEFAULT, Observer

MODES = ("envelope", "outputs")  # "raw" outputs are for chaining runtime servers, not for clients
ACTIONS = {
    "healthcheck": "Returns b'ok' while the front door serves; UNAVAILABLE until every RUNNING deployment "
    "is routed (after a restart, until they are resumed; a front door apart from the control plane: after "
    "its first complete sync with the metadata store).",
    "version": "Returns the server version (flightline.__version__) as UTF-8.",
}

log = logging.getLogger(__name__)


class FrontDoor(FlightService):
    """Listens from construction; `serve()` blocks, or use it as a context manager in tests. `close()`
    (from FlightService) stops it without waiting forever for clients that keep streams open."""

    observer: Observer = DEFAULT  # the App sets its own

    def __init__(
        self,
        router: Router,
        location: str = "grpc+tcp://127.0.0.1:0",
        *,
        ready: Callable[[], bool] | None = None,
        authenticator: Authenticator | None = None,
        limits: CallerLimits | None = None,
        **kwargs: Any,
    ) -> None:
        if authenticator is not None:
            kwargs.setdefault("middleware", {})[auth.KEY] = auth.AuthMiddlewareFactory(authenticator)
            kwargs.setdefault("auth_handler", auth.HandshakeOnly())
        super().__init__(location, **kwargs)
        self.authenticated = authenticator is not None  # without one (tests of the data path): open
        self.limits = limits or CallerLimits()
        self.router = router
        self._ready = ready  # None: routes are pushed in-process, so always ready
        uri = flight.Location(location).uri.decode()
        if uri.startswith(("grpc+tcp://", "grpc+tls://")):  # advertise the port bound when asked for 0
            uri = f"{uri.rsplit(':', 1)[0]}:{self.port}"
        self.location = uri

    # -- data ---------------------------------------------------------------------------------------

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        name, echo = _target(descriptor)
        identity = self._caller(context)
        served = self._served(name, identity)
        route = served.pick()  # per stream: a stream's answers all come from one version
        shadow = served.shadow
        # Which version answered, on every result batch (format: protos/flightline/v1/deployment.proto).
        answered_by = pa.py_buffer(route.answered_by) if route.answered_by else None
        held = self.limits.stream(identity) if identity is not None else None
        if held is not None:
            try:
                held.__enter__()
            except Exception as exc:  # over the caller's limit: RESOURCE_EXHAUSTED-like, retry later
                raise flight.FlightUnavailableError(str(exc)) from None
        route.usage.enter()  # an update unloads this route's runtimes only after its streams ended
        seen = self.observer.flight_stream(_display(route))  # counts, times and logs this stream
        streams: list[StepStream] = []
        try:
            streams = [step.open() for step in route.steps]
            result_schema: pa.Schema | None = None
            output_schema: pa.Schema | None = None
            if not is_open(route.output_schema):
                output_schema = route.output_schema
                result_schema = envelope_schema(reader.schema, output_schema, echo)
                writer.begin(result_schema)
            for chunk in seen.count(reader):
                self.check_open()
                batch = chunk.data
                if batch is None:  # a metadata-only message carries nothing to infer
                    continue
                outputs = _run_steps(route, streams, batch, params.decode(chunk.app_metadata))
                if output_schema is None:  # open schema: the first batch fixes the stream's columns
                    output_schema = outputs.schema
                    result_schema = envelope_schema(batch.schema, output_schema, echo)
                    writer.begin(result_schema)
                elif not outputs.schema.equals(output_schema):
                    outputs = conform(outputs, output_schema, f"the outputs of {route.name!r}")
                result = envelope(batch, outputs, echo=echo, schema=result_schema)
                if answered_by is None:
                    writer.write_batch(result)
                else:
                    writer.write_with_metadata(result, answered_by)
                if shadow is not None:  # after the answer is sent: the shadow never delays it
                    shadow.offer(batch, outputs)
            if result_schema is None:
                writer.begin(envelope_schema(reader.schema, route.output_schema, echo))
        except BaseException as error:
            seen.failed(error)
            raise
        finally:
            for stream in streams:
                stream.close()
            route.usage.exit()
            seen.end()
            if held is not None:
                held.__exit__(None, None, None)

    # -- metadata -----------------------------------------------------------------------------------

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        name, echo = _target(descriptor)
        return self._info(self._route(name, self._caller(context)), descriptor, echo)

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        name, echo = _target(descriptor)
        route = self._route(name, self._caller(context))
        return flight.SchemaResult(envelope_schema(route.input_schema, route.output_schema, echo))

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        identity = self._caller(context)
        for name in self.router.names():
            if not self._may_see(identity, name):
                continue
            try:
                route = self.router.get(name)
            except NotFound:  # undeployed since names() was read
                continue
            yield self._info(route, flight.FlightDescriptor.for_path(name), echo=True)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        if action.type == "healthcheck":
            if not self.router.ready or (self._ready is not None and not self._ready()):
                raise flight_service.Unavailable("not ready: not every running deployment is routed yet")
            return iter([b"ok"])
        if action.type == "version":
            return iter([__version__.encode()])
        self._caller(context)
        raise Unimplemented(f"unknown action {action.type!r}; known actions: {sorted(ACTIONS)}")

    def _info(self, route: Route, descriptor: flight.FlightDescriptor, echo: bool) -> flight.FlightInfo:
        # No endpoints: a Flight client must consume every endpoint with do_get, which serves nothing here.
        schema = envelope_schema(route.input_schema, route.output_schema, echo)
        return flight.FlightInfo(schema, descriptor, [], -1, -1)

    def _caller(self, context: flight.ServerCallContext) -> Identity | None:
        return auth.caller(context) if self.authenticated else None

    @staticmethod
    def _may_see(identity: Identity | None, key: str) -> bool:
        if identity is None:  # no authentication configured
            return True
        try:
            workspace_id, _ = split_key(key)
        except ValueError:  # a route put by hand (tests): only platform admins see it
            return identity.admin
        return identity.role_in(workspace_id) is not None

    def _route(self, name: str, identity: Identity | None = None) -> Route:
        return self._served(name, identity).primary

    def _served(self, name: str, identity: Identity | None = None) -> Served:
        """What a descriptor names: a route key, or a bare name that is the caller's one deployment of
        that name. Another workspace's is NOT_FOUND, as if it did not exist."""
        key = name
        if "/" not in name:
            keys = [k for k in self.router.named(name) if self._may_see(identity, k)]
            if len(keys) > 1:
                raise InvalidArgument(
                    f"deployment {name!r} exists in several workspaces; use its flight_path "
                    f"(for_path('<workspace id>/{name}'))"
                )
            if keys:
                key = keys[0]
        if not self._may_see(identity, key):
            raise flight_service.NotFound(f"deployment {name.rpartition('/')[2]!r} not found")
        try:
            return self.router.served(key)
        except NotFound as error:
            raise flight_service.NotFound(str(error)) from None
        except Unavailable as error:  # a restarting server has not routed it yet: retry
            raise flight_service.Unavailable(str(error)) from None


def _target(descriptor: flight.FlightDescriptor) -> tuple[str, bool]:
    """(deployment name, echo inputs?) named by a descriptor path: [name] or [name, mode]."""
    path = descriptor.path if descriptor.descriptor_type == flight.DescriptorType.PATH else None
    if not path or len(path) > 2 or not path[0]:
        raise InvalidArgument(
            "expected FlightDescriptor.for_path(deployment) or "
            f"for_path(deployment, mode) with mode one of {list(MODES)}"
        )
    mode = path[1].decode(errors="replace") if len(path) == 2 else "envelope"
    if mode not in MODES:
        if mode in ALL_MODES:
            raise InvalidArgument(
                f"response mode {mode!r} is served by runtime servers only; "
                f"the front door serves {list(MODES)}"
            )
        raise InvalidArgument(f"unknown response mode {mode!r}; expected one of {list(MODES)}")
    return path[0].decode(errors="replace"), mode == "envelope"


def _run_steps(
    route: Route, streams: list[StepStream], batch: pa.RecordBatch, request_params: pa.RecordBatch | None
) -> pa.RecordBatch:
    """The last step's raw outputs; each step's error told in terms of the deployment, its detail logged.
    The request's parameters go to every step (each takes those its model declares)."""
    data = batch
    for index, stream in enumerate(streams):
        try:
            data = stream.run(data, request_params)
        except InvalidInput as error:
            if index == 0:  # the request itself breaks the rules; the message names the column
                raise
            step = _step_name(route, index)
            raise Fault(f"{step} rejected the outputs of step {index}: {error}") from error
        except Unavailable as error:
            raise flight_service.Unavailable(
                f"runtime for {_step_name(route, index)} died; it is being restarted, retry"
            ) from error
        except StepFailed as error:
            raise Fault(f"{_step_name(route, index)} failed: {error.public}{SEE_LOG}") from error
    return data


def _step_name(route: Route, index: int) -> str:
    # Built only when a step failed: the happy path formats nothing per batch.
    return f"step {index + 1} of {_display(route)!r}"


def _display(route: Route) -> str:
    """A route's deployment name, as clients and metrics know it (the key is "<workspace>/<name>")."""
    return route.name.rpartition("/")[2]
