"""One generic Arrow Flight server hosting many models, loaded and unloaded while it runs:

    python -m flightline.runtimes.server --listen grpc+unix:///path/sock | grpc+tcp://127.0.0.1:0
                                         --artifacts DIR [--exit-with-stdin] [--shutdown-grace S]

It starts empty and prints exactly one line to stdout, `FLIGHTLINE_READY <location>`, once it serves.
Models are addressed by a caller-chosen key (e.g. `<deployment>.<step>`); their artifacts by sha256: the
server reads `DIR/<sha256>` (a file, or a folder for unpacked archives), a folder its backend fills. The
load request never carries a host path, so a backend that fetches artifacts into a pod works unchanged.
When it cannot listen (a TCP port taken, a socket path it cannot bind) it prints no line and exits with
code 4 (a fault of the moment: the backend retries). SIGTERM/SIGINT shut it down with exit code 0;
streams still open after `--shutdown-grace` seconds (default 5) are cut. With `--exit-with-stdin`, end
of stdin shuts it down the same way: a parent that holds the write end of a pipe takes the process with
it when it dies, even by SIGKILL.

Flight methods (descriptor path `[key]` or `[key, mode]`, mode "envelope" (default), "outputs" or "raw"):
- do_exchange: one result batch per request batch, on the same stream; a batch breaking the data rules
  fails its stream with INVALID_ARGUMENT, other streams are unaffected. A zero-row batch gets a zero-row
  result. An unknown key is NOT_FOUND, telling the caller that deployments are called by name at the
  front door (runtime servers are internal and not advertised); any other descriptor is INVALID_ARGUMENT.
- get_schema / get_flight_info: the result schema for that mode; FlightInfo has NO endpoints (nothing is
  served by do_get: inference is do_exchange on the same descriptor, here).
- do_action, see ACTIONS. A `load` the model fails answers INVALID_ARGUMENT with the ModelLoadError reason.
Errors carry short messages only (see `flight_service.py`): a model that raised is INTERNAL "the model
failed; see the server log", with the traceback on this process's stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes import load_runtime, params
from flightline.runtimes.base import InvalidInput, ModelLoadError, ModelSpec
from flightline.runtimes.flight_service import (
    SEE_LOG,
    Fault,
    FlightService,
    InvalidArgument,
    NotFound,
    SecretMiddlewareFactory,
    Unimplemented,
)
from flightline.runtimes.host import MODES, Host, Mode, ModelOutputError, parse_mode
from flightline.runtimes.plugins import plugin
from flightline.runtimes.signals import stop_on_signals, wait_for_stop

READY: Final = "FLIGHTLINE_READY"
LISTEN_ERROR_EXIT_CODE: Final = 4
MODEL_FAILED: Final = "the model failed" + SEE_LOG
FRONT_DOOR_HINT: Final = (
    "runtime servers are internal and address models by key; to call a deployment by name, call the front "
    "door (the deployment's flight_location) with for_path(deployment)"
)
SHUTDOWN_GRACE_SECONDS: Final = 5.0
EXIT_WITH_STDIN: Final = "--exit-with-stdin"
SECRET_STDIN: Final = "--secret-stdin"
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")

ACTIONS: Final = {
    "load": "Body: JSON {key, runtime, artifact (sha256), framework, options, input_schema, output_schema "
    "(base64 Arrow IPC or null)}. Loads (or replaces) the model under key; INVALID_ARGUMENT with the "
    "reason when it cannot load. Returns b'ok'.",
    "unload": "Body: the key. Unloads the model; NOT_FOUND for an unknown key. Returns b'ok'.",
    "models": "Returns a JSON list of the loaded models: [{key, runtime, framework, artifact}].",
    "healthcheck": "Returns b'ok' while the server serves.",
    "schemas": "Body: the key. Returns the model's input schema, then its output schema, as Arrow IPC.",
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSpec:
    """The body of a `load` action, as the backend sends it."""

    key: str
    runtime: str
    artifact: str  # sha256 of the artifact under the server's artifacts folder
    framework: str
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        def ipc(schema: pa.Schema | None) -> str | None:
            return None if schema is None else base64.b64encode(schema.serialize().to_pybytes()).decode()

        return json.dumps(
            {
                "key": self.key,
                "runtime": self.runtime,
                "artifact": self.artifact,
                "framework": self.framework,
                "options": dict(self.options),
                "input_schema": ipc(self.input_schema),
                "output_schema": ipc(self.output_schema),
            }
        ).encode()

    @classmethod
    def from_json(cls, body: bytes) -> LoadSpec:
        """Raises ValueError naming the field that is missing or malformed."""
        try:
            meta = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"load body is not JSON: {error}") from None
        if not isinstance(meta, dict):
            raise ValueError("load body must be a JSON object")

        def text(name: str) -> str:
            value = meta.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"load body field {name!r} must be a non-empty string")
            return value

        def schema(name: str) -> pa.Schema | None:
            value = meta.get(name)
            if value is None:
                return None
            try:
                return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(value)))
            except (TypeError, ValueError, pa.ArrowException):
                raise ValueError(f"load body field {name!r} is not a base64 Arrow IPC schema") from None

        options = meta.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
            raise ValueError("load body field 'options' must be an object of strings")
        key, runtime, artifact, framework = text("key"), text("runtime"), text("artifact"), text("framework")
        if not SHA256_HEX.fullmatch(artifact):
            raise ValueError("load body field 'artifact' must be a sha256 (64 lower-case hex digits)")
        return cls(
            key, runtime, artifact, framework, schema("input_schema"), schema("output_schema"), options
        )


class Model:
    """One hosted model: its Host and, for runtimes that are not thread-safe, the lock around inference."""

    def __init__(self, spec: LoadSpec, host: Host, concurrent: bool) -> None:
        self.spec = spec
        self.host = host
        self._lock = None if concurrent else threading.Lock()

    def respond(
        self, batch: pa.RecordBatch, mode: Mode, params: pa.RecordBatch | None = None
    ) -> pa.RecordBatch:
        if self._lock is None:
            return self.host.respond(batch, mode, params)
        with self._lock:
            return self.host.respond(batch, mode, params)


def _target(descriptor: flight.FlightDescriptor) -> tuple[str, Mode]:
    """(key, mode) named by a descriptor; INVALID_ARGUMENT for anything else."""
    path = descriptor.path if descriptor.descriptor_type == flight.DescriptorType.PATH else None
    if not path or len(path) > 2:
        expected = "expected FlightDescriptor.for_path(key) or for_path(key, mode)"
        raise InvalidArgument(f"{expected}; {FRONT_DOOR_HINT}")
    try:
        return path[0].decode(), parse_mode(path[1] if len(path) == 2 else None)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"{error}; modes are {list(MODES)}") from None


def remote_error_message(error: BaseException) -> str:
    """The server's own message from a Flight client error, without the traceback and gRPC context that
    pyarrow appends (for callers that pass the message on, e.g. the front door)."""
    text = str(error)
    _, found, after = text.partition("with message: ")
    text = after if found else text
    for marker in (". Detail: ", ". gRPC client debug context: "):
        text = text.split(marker, 1)[0]
    return text.strip()


def conform(batch: pa.RecordBatch, schema: pa.Schema, what: str) -> pa.RecordBatch:
    """A later batch of an open-schema stream, cast to the columns the stream's first batch fixed.
    `what` names the batch's producer in the INTERNAL error, e.g. "the model's result"."""
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
        raise Fault(f"{what} changed columns within one stream: {batch.schema} after {schema}") from error


class RuntimeServer(FlightService):
    """Serves many models over Flight. Listens from construction; usable as a context manager in tests.
    `location` is what clients dial: the unix socket URI, or the TCP address with the port bound."""

    def __init__(self, artifacts: Path, location: str = "grpc+tcp://127.0.0.1:0", **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self.artifacts = artifacts
        uri = flight.Location(location).uri.decode()
        if uri.startswith("grpc+tcp://"):  # the port actually bound when asked for port 0
            uri = f"{uri.rsplit(':', 1)[0]}:{self.port}"
        self.location = uri
        self._models: dict[str, Model] = {}
        self._models_lock = threading.Lock()  # FlightService's own `_lock` counts streams

    # -- models -------------------------------------------------------------------------------------

    def load(self, spec: LoadSpec) -> Model:
        """Loads `spec` and serves it under its key (replacing what was there: reloads are idempotent).
        Raises ModelLoadError with the reason."""
        artifact = self.artifacts / spec.artifact
        if not artifact.exists():
            raise ModelLoadError(f"artifact {spec.artifact} is not in the runtime server's artifacts folder")
        model_spec = ModelSpec(artifact, spec.framework, spec.input_schema, spec.output_schema, spec.options)
        try:
            host = Host(load_runtime(spec.runtime, model_spec))
        except ModelLoadError:
            raise
        except Exception as error:  # model code raised while loading: the reason is the model's
            raise ModelLoadError(f"{type(error).__name__}: {error}") from error
        host.runtime.warm_up()  # before it serves: the first client batch finds it warm (failures logged)
        model = Model(spec, host, plugin(spec.runtime).concurrent)
        with self._models_lock:
            self._models[spec.key] = model
        return model

    def unload(self, key: str) -> None:
        with self._models_lock:
            if self._models.pop(key, None) is None:
                raise NotFound(f"no model {key!r} on this runtime server")

    def model(self, key: str) -> Model:
        with self._models_lock:
            model = self._models.get(key)
        if model is None:
            raise NotFound(f"no model {key!r} on this runtime server; {FRONT_DOOR_HINT}")
        return model

    def keys(self) -> list[str]:
        with self._models_lock:
            return sorted(self._models)

    # -- data ---------------------------------------------------------------------------------------

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        key, mode = _target(descriptor)
        model = self.model(key)  # the stream keeps the model it started with, even if it is unloaded
        host = model.host
        schema: pa.Schema | None = None
        if not host.has_open_schema:
            schema = host.result_schema(mode)
            writer.begin(schema)
        for chunk in reader:
            self.check_open()
            batch = chunk.data
            if batch is None:  # a metadata-only message carries nothing to infer
                continue
            result = self._respond(model, batch, mode, params.decode(chunk.app_metadata))
            if schema is None:
                schema = result.schema
                writer.begin(schema)
            elif not result.schema.equals(schema):
                result = conform(result, schema, "the model's result")
            writer.write_batch(result)

    @staticmethod
    def _respond(
        model: Model, batch: pa.RecordBatch, mode: Mode, request_params: pa.RecordBatch | None
    ) -> pa.RecordBatch:
        try:
            return model.respond(batch, mode, request_params)
        except InvalidInput:
            raise
        except ModelOutputError as error:  # our own words about the model's contract: no paths, no data
            raise Fault(str(error)) from error
        except Exception as error:  # the model's own exception may hold anything: it goes to the log only
            raise Fault(MODEL_FAILED) from error

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        key, mode = _target(descriptor)
        return flight.SchemaResult(self.model(key).host.result_schema(mode))

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        # No endpoints: Flight clients must consume every endpoint with do_get, which this server does not
        # serve; inference is do_exchange on this same descriptor at this server.
        key, mode = _target(descriptor)
        return flight.FlightInfo(self.model(key).host.result_schema(mode), descriptor, [], -1, -1)

    # -- actions ------------------------------------------------------------------------------------

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == "healthcheck":
            return iter([b"ok"])
        if action.type == "load":
            try:
                spec = LoadSpec.from_json(body)
                self.load(spec)
            except (ValueError, ModelLoadError) as error:
                raise InvalidArgument(" ".join(str(error).split())) from None  # the model's own failure
            log.info("loaded %s (%s)", spec.key, spec.runtime)
            return iter([b"ok"])
        if action.type == "unload":
            self.unload(body.decode(errors="replace"))
            return iter([b"ok"])
        if action.type == "models":
            with self._models_lock:
                listed = [
                    {
                        "key": k,
                        "runtime": m.spec.runtime,
                        "framework": m.spec.framework,
                        "artifact": m.spec.artifact,
                    }
                    for k, m in sorted(self._models.items())
                ]
            return iter([json.dumps(listed).encode()])
        if action.type == "schemas":
            host = self.model(body.decode(errors="replace")).host
            return iter(
                [host.input_schema.serialize().to_pybytes(), host.output_schema.serialize().to_pybytes()]
            )
        raise Unimplemented(f"unknown action {action.type!r}; known actions: {sorted(ACTIONS)}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flightline.runtimes.server", description="Serve models over Arrow Flight."
    )
    parser.add_argument(
        "--listen",
        default="grpc+tcp://127.0.0.1:0",
        help="grpc+unix:///path/to.sock (preferred on one host) or grpc+tcp://HOST:PORT (0 picks a port)",
    )
    parser.add_argument(
        "--artifacts", required=True, type=Path, help="folder holding artifacts named by their sha256"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=SHUTDOWN_GRACE_SECONDS,
        metavar="SECONDS",
        help="how long open streams may keep the process alive after SIGTERM",
    )
    parser.add_argument(
        SECRET_STDIN,
        action="store_true",
        help="read a secret from the first line of stdin and serve only callers that send it in the "
        "x-flightline-runtime-secret header (how the server's backend starts runtime servers)",
    )
    parser.add_argument(
        EXIT_WITH_STDIN,
        action="store_true",
        help="shut down at the end of stdin, i.e. when the parent holding its pipe closes it or dies "
        "(so never with stdin from /dev/null, which ends at once)",
    )
    return parser.parse_args(argv)


def _stop_at_end_of_stdin(stop: threading.Event) -> None:
    def watch() -> None:
        # Reads until EOF: the parent never writes, so this only returns once it closed the pipe or died.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # fd 0, not sys.stdin: that is None when started without one
                pass
        stop.set()

    threading.Thread(target=watch, daemon=True, name="stdin-watch").start()


def _first_line_of_stdin() -> str:
    line = b""
    while not line.endswith(b"\n") and len(line) < 4096:
        byte = os.read(0, 1)  # one byte at a time: what follows stays for the stdin watch
        if not byte:
            break
        line += byte
    return line.decode(errors="replace").strip()


def _shutdown(server: RuntimeServer, grace: float) -> None:
    if not server.close(grace):
        # The interpreter's own exit would call shutdown() again and wait forever: end the streams with it.
        print(f"streams still open after {grace:g}s; exiting", file=sys.stderr, flush=True)
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # stdout carries only the protocol line; whatever model code prints (print(data) in a Python step)
    # goes to stderr.
    protocol, sys.stdout = sys.stdout, sys.stderr
    # Model exceptions are logged here with their traceback (stderr, which the backend logs).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.listen.startswith("grpc+unix://"):
        # A socket left by a killed predecessor would make the bind fail; it is ours to replace.
        with contextlib.suppress(OSError):
            Path(args.listen.removeprefix("grpc+unix://")).unlink(missing_ok=True)
    kwargs: dict[str, Any] = {}
    if args.secret_stdin:  # before anything else reads stdin; never on the command line (ps shows it)
        secret = _first_line_of_stdin()
        if not secret:
            print("no secret on stdin", file=sys.stderr, flush=True)
            return 2
        kwargs["middleware"] = {"secret": SecretMiddlewareFactory(secret)}
    try:
        server = RuntimeServer(args.artifacts.resolve(), args.listen, **kwargs)
    except Exception as error:  # pyarrow says only "Server did not start properly"; gRPC logged why
        print(f"cannot listen on {args.listen}: {error}", file=sys.stderr, flush=True)
        return LISTEN_ERROR_EXIT_CODE
    stop = stop_on_signals()  # before READY: whoever reads it may signal us at once
    if args.exit_with_stdin:
        _stop_at_end_of_stdin(stop)
    print(f"{READY} {server.location}", file=protocol, flush=True)
    wait_for_stop(stop)
    _shutdown(server, args.shutdown_grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
