"""One generic Arrow Flight server hosting one model; the supervisor runs one such process per model:

    python -m flightline.runtimes.server --runtime onnx --spec DIR [--host 127.0.0.1] [--port 0]
                                         [--exit-with-stdin]

DIR holds a saved `ModelSpec`. The process prints exactly one line to stdout:
`FLIGHTLINE_READY grpc+tcp://HOST:PORT` once it serves, or `FLIGHTLINE_LOAD_ERROR <reason>` and exits with
code 3 when the model cannot be loaded (a fault of the model: starting again gives the same error). When
it cannot listen on its port (e.g. the port is taken) it prints no line and exits with code 4 (a fault of
the moment: the supervisor retries). SIGTERM/SIGINT shut it down with exit code 0; streams still open after
`--shutdown-grace` seconds (default 5) are cut. With `--exit-with-stdin`, end of stdin shuts it down the
same way: a parent that holds the write end of a pipe takes the process with it when it dies, even by
SIGKILL.

Descriptors this server accepts: it serves ONE model, so a descriptor names only the response mode:
`FlightDescriptor.for_path()` (or a CMD descriptor) -> "envelope", `for_path("envelope")`,
`for_path("outputs")` or `for_path("raw")`. Anything else is INVALID_ARGUMENT; a path naming a deployment
(e.g. `for_path("fraud")` or `for_path("fraud", "outputs")`) is told to call the front door, which routes
deployments by name.

Flight methods:
- do_exchange: one result batch per request batch, on the same stream; a batch breaking the data rules
  fails its stream with INVALID_ARGUMENT, other streams are unaffected. A zero-row batch gets a zero-row
  result.
- get_schema / get_flight_info: the result schema for that mode; FlightInfo has NO endpoints (nothing is
  served by do_get: inference is do_exchange on the same descriptor, here).
- do_action "healthcheck" -> b"ok"; "schemas" -> input then output schema, as Arrow IPC bytes.
Errors carry short messages only (see `flight_service.py`): a model that raised is INTERNAL "the model
failed; see the server log", with the traceback on this process's stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes import load_runtime
from flightline.runtimes.base import InvalidInput, ModelLoadError, ModelSpec
from flightline.runtimes.flight_service import SEE_LOG, Fault, FlightService, InvalidArgument, Unimplemented
from flightline.runtimes.host import MODES, Host, Mode, ModelOutputError, parse_mode

READY: Final = "FLIGHTLINE_READY"
LOAD_ERROR: Final = "FLIGHTLINE_LOAD_ERROR"
LOAD_ERROR_EXIT_CODE: Final = 3
LISTEN_ERROR_EXIT_CODE: Final = 4
MODEL_FAILED: Final = "the model failed" + SEE_LOG
SHUTDOWN_GRACE_SECONDS: Final = 5.0
EXIT_WITH_STDIN: Final = "--exit-with-stdin"

ACTIONS: Final = {
    "healthcheck": "Returns b'ok' while the model is loaded and serving.",
    "schemas": "Returns the model's input schema, then its output schema, as Arrow IPC bytes.",
}


def mode_of(descriptor: flight.FlightDescriptor) -> Mode:
    """The response mode a descriptor asks for; INVALID_ARGUMENT for anything else."""
    path = descriptor.path if descriptor.descriptor_type == flight.DescriptorType.PATH else None
    if not path:
        return parse_mode(None)
    segments = [segment.decode(errors="replace") for segment in path]
    if len(segments) == 1 and (not segments[0] or segments[0] in MODES):
        return parse_mode(segments[0])
    what = f"unknown response mode {segments[0]!r}" if len(segments) == 1 else f"descriptor path {segments}"
    raise InvalidArgument(
        f"{what}: this runtime server serves one model, so use FlightDescriptor.for_path() or "
        f"for_path(mode) with mode one of {list(MODES)}; to call a deployment by name, call the front door "
        "(the deployment's flight_location) with for_path(deployment)"
    )


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
    """Serves one `Host` over Flight. Listens from construction; usable as a context manager in tests."""

    def __init__(self, host: Host, location: str = "grpc+tcp://127.0.0.1:0", **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self.host = host
        bind_host = flight.Location(location).uri.decode().split("://", 1)[1].rsplit(":", 1)[0]
        self.location = flight.Location.for_grpc_tcp(bind_host, self.port)

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        mode = mode_of(descriptor)
        host = self.host
        schema: pa.Schema | None = None
        if not host.has_open_schema:
            schema = host.result_schema(mode)
            writer.begin(schema)
        for chunk in reader:
            self.check_open()
            batch = chunk.data
            if batch is None:  # a metadata-only message carries nothing to infer
                continue
            result = self._respond(batch, mode)
            if schema is None:
                schema = result.schema
                writer.begin(schema)
            elif not result.schema.equals(schema):
                result = conform(result, schema, "the model's result")
            writer.write_batch(result)

    def _respond(self, batch: pa.RecordBatch, mode: Mode) -> pa.RecordBatch:
        try:
            return self.host.respond(batch, mode)
        except InvalidInput:
            raise
        except ModelOutputError as error:  # our own words about the model's contract: no paths, no data
            raise Fault(str(error)) from error
        except Exception as error:  # the model's own exception may hold anything: it goes to the log only
            raise Fault(MODEL_FAILED) from error

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        return flight.SchemaResult(self.host.result_schema(mode_of(descriptor)))

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        # No endpoints: Flight clients must consume every endpoint with do_get, which this server does not
        # serve; inference is do_exchange on this same descriptor at this server.
        return flight.FlightInfo(self.host.result_schema(mode_of(descriptor)), descriptor, [], -1, -1)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(ACTIONS.items())

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        if action.type == "healthcheck":
            return iter([b"ok"])
        if action.type == "schemas":
            return iter(
                [
                    self.host.input_schema.serialize().to_pybytes(),
                    self.host.output_schema.serialize().to_pybytes(),
                ]
            )
        raise Unimplemented(f"unknown action {action.type!r}; known actions: {sorted(ACTIONS)}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flightline.runtimes.server", description="Serve one model over Arrow Flight."
    )
    parser.add_argument("--runtime", required=True, help="runtime name, e.g. onnx, python, sklearn")
    parser.add_argument("--spec", required=True, type=Path, help="folder holding a saved ModelSpec")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=SHUTDOWN_GRACE_SECONDS,
        metavar="SECONDS",
        help="how long open streams may keep the process alive after SIGTERM",
    )
    parser.add_argument(
        EXIT_WITH_STDIN,
        action="store_true",
        help="shut down at the end of stdin, i.e. when the parent holding its pipe closes it or dies "
        "(so never with stdin from /dev/null, which ends at once)",
    )
    return parser.parse_args(argv)


def _load(runtime: str, spec_dir: Path) -> Host:
    spec = ModelSpec.load(spec_dir)
    return Host(load_runtime(runtime, spec))


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _stop_at_end_of_stdin(stop: threading.Event) -> None:
    def watch() -> None:
        # Reads until EOF: the parent never writes, so this only returns once it closed the pipe or died.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # fd 0, not sys.stdin: that is None when started without one
                pass
        stop.set()

    threading.Thread(target=watch, daemon=True, name="stdin-watch").start()


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
    try:
        host = _load(args.runtime, args.spec)
    except Exception as error:
        reason = str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
        print(f"{LOAD_ERROR} {' '.join(reason.split())}", file=protocol, flush=True)
        return LOAD_ERROR_EXIT_CODE
    # Model exceptions are logged here with their traceback (stderr, which the supervisor logs).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        server = RuntimeServer(host, f"grpc+tcp://{args.host}:{args.port}")
    except Exception as error:  # pyarrow says only "Server did not start properly"; gRPC logged why
        print(f"cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr, flush=True)
        return LISTEN_ERROR_EXIT_CODE
    stop = _stop_on_signals()  # before READY: whoever reads it may signal us at once
    if args.exit_with_stdin:
        _stop_at_end_of_stdin(stop)
    print(f"{READY} {server.location.uri.decode()}", file=protocol, flush=True)
    stop.wait()
    _shutdown(server, args.shutdown_grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
