"""What the Flight front door and the runtime servers share: the ONE mapping from errors to what a Flight
client sees, and a bounded shutdown that ends the streams clients hold open.

What reaches a pyarrow client (measured with pyarrow 25): for an exception raised in a Python handler that
is not a `FlightError`, pyarrow sends `str(exc)` plus ". Detail: Python exception: " and the exception
formatted by `traceback.format_exception`, i.e. the server's traceback with its file paths. A `FlightError`
subclass (FlightInternalError, FlightUnavailableError, ...) goes out as its message plus ". Detail: <code>"
and `extra_info` (b"" here), without a traceback, but Flight has no such class for INVALID_ARGUMENT,
NOT_FOUND or UNIMPLEMENTED. So every handler of a `FlightService` is wrapped (`_guarded`) and raises only:

- `InvalidArgument` / `NotFound` / `Unimplemented` (client mistakes): the message as given. These make
  pyarrow's traceback formatting fail on purpose (`__notes__` raises), and pyarrow then falls back to the
  class name: the client reads "<message>. Detail: Python exception: InvalidArgument".
- `FlightUnavailableError` for `Unavailable` (retry later), `FlightInternalError` for `Fault` (a server fault
  whose message is chosen to be shown) and for anything else (a bug): "internal error; see the server log".
  The detail (the cause, with its traceback) goes to this process's log, never to the client.
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes.base import InvalidInput

log = logging.getLogger(__name__)

SHUTTING_DOWN: Final = "the server is shutting down; reconnect and retry"
SEE_LOG: Final = "; see the server log"
INTERNAL: Final = "internal error" + SEE_LOG
HANDLERS: Final = (
    "do_exchange",
    "do_get",
    "do_put",
    "get_flight_info",
    "get_schema",
    "list_flights",
    "list_actions",
    "do_action",
)

F = TypeVar("F", bound=Callable[..., Any])


class _Unformattable(Exception):
    pass


class _Untraced:
    """Mixed into the client-facing errors: formatting one with `traceback` fails, so pyarrow sends only the
    class name after the message (see the module docstring). Never log these with exc_info."""

    @property
    def __notes__(self) -> list[str]:
        raise _Unformattable


class InvalidArgument(_Untraced, pa.ArrowInvalid):  # type: ignore[misc]
    """INVALID_ARGUMENT (ArrowInvalid at the client): the request is wrong; the message says how."""


class NotFound(_Untraced, pa.ArrowKeyError):  # type: ignore[misc]
    """NOT_FOUND (ArrowKeyError at the client)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Unimplemented(_Untraced, pa.ArrowNotImplementedError):  # type: ignore[misc]
    """UNIMPLEMENTED (ArrowNotImplementedError at the client): this server does not serve that call."""


class Unavailable(Exception):
    """UNAVAILABLE: a dependency (e.g. a runtime process) is down; retrying later may help. The message
    is shown; the cause is logged."""


class Fault(Exception):
    """INTERNAL with this message (keep it free of paths and remote text); the cause is logged."""


def client_error(exc: BaseException, where: str) -> BaseException:
    """The exception a handler raises in place of `exc`; logs what the client is not told."""
    if isinstance(exc, InvalidArgument | NotFound | Unimplemented):
        return exc
    if isinstance(exc, InvalidInput):  # the data rules, which name the column
        return InvalidArgument(str(exc))
    error: BaseException
    if isinstance(exc, flight.FlightCancelledError | flight.FlightTimedOutError):
        error = exc  # the client gave up on the call; it reads nothing more
    elif isinstance(exc, flight.FlightUnauthenticatedError | flight.FlightUnavailableError):
        error = exc  # raised with words meant for the client (credentials, a caller's limit)
    elif isinstance(exc, Unavailable):
        log.warning("%s: %s (%s)", where, exc, exc.__cause__ or "no cause")
        error = flight.FlightUnavailableError(str(exc))
    elif isinstance(exc, Fault):
        log.error("%s: %s", where, exc, exc_info=exc.__cause__ or exc)
        error = flight.FlightInternalError(str(exc))
    else:
        log.error("%s failed", where, exc_info=exc)
        error = flight.FlightInternalError(INTERNAL)
    return error


def _guarded(where: str, method: F, *, stream: bool) -> F:
    @functools.wraps(method)
    def guarded(self: FlightService, *args: Any) -> Any:
        try:
            if not stream:
                result = method(self, *args)
            else:
                self._stream_opened()
                try:
                    result = method(self, *args)
                finally:
                    self._stream_closed()
        except Exception as exc:
            raise client_error(exc, where) from None
        if isinstance(result, Iterator):  # a generator fails as it is read, after the handler returned
            return _guarded_iterator(where, result)
        return result

    return guarded  # type: ignore[return-value]


def _guarded_iterator(name: str, results: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from results
    except Exception as exc:
        raise client_error(exc, name) from None


RUNTIME_SECRET_HEADER: Final = "x-flightline-runtime-secret"


class SecretMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Admits only callers that send `secret` in RUNTIME_SECRET_HEADER: a runtime server started by the
    backend serves its front door (and backend), never a client that found its socket or port."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret.encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> None:
        sent = headers.get(RUNTIME_SECRET_HEADER) or [b""]
        value = sent[0].encode() if isinstance(sent[0], str) else bytes(sent[0])
        if not hmac.compare_digest(value, self._secret):
            raise flight.FlightUnauthenticatedError(
                "runtime servers serve the front door only; call the deployment at its flight_location"
            )


class HeadersMiddleware(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self._headers = headers

    def sending_headers(self) -> dict[str, str]:
        return self._headers


class HeadersFactory(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Sends fixed headers on every call of a FlightClient (`flight.connect(..., middleware=[...])`)."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self._headers = headers

    def start_call(self, info: flight.CallInfo) -> HeadersMiddleware:
        return HeadersMiddleware(self._headers)


def runtime_client(location: str, secret: str, **options: Any) -> flight.FlightClient:
    """A client of a runtime server that sends its secret (none when `secret` is empty)."""
    middleware = [HeadersFactory({RUNTIME_SECRET_HEADER: secret})] if secret else []
    return flight.connect(location, middleware=middleware, **options)


class FlightService(flight.FlightServerBase):  # type: ignore[misc]  # pyarrow ships no type stubs
    """A Flight server whose every handler (in `HANDLERS`, including a subclass's) is guarded, that refuses
    do_get/do_put cleanly, and whose `close()` is bounded. Exchanges call `check_open()` between batches,
    so streams that keep sending end once the server closes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_handlers(cls)

    def __init__(self, location: str, **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open_streams = 0

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        raise Unimplemented(
            "do_get is not served: run inference with do_exchange on the descriptor given to get_flight_info"
        )

    def do_put(self, context: flight.ServerCallContext, *args: Any) -> None:
        raise Unimplemented("do_put is not served: run inference with do_exchange")

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        return iter(())

    # -- streams and shutdown ---------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open_streams

    def _stream_opened(self) -> None:
        self.check_open()
        with self._lock:
            self._open_streams += 1

    def _stream_closed(self) -> None:
        with self._lock:
            self._open_streams -= 1

    def check_open(self) -> None:
        """Raises Unavailable once the server is closing: a stream ends at its next batch."""
        if self._closing.is_set():
            raise Unavailable(SHUTTING_DOWN)

    def close(self, grace: float = 5.0) -> bool:
        """Stops taking calls, ends streams at their next batch, and waits up to `grace` seconds for the
        rest; True if every call ended.

        Flight's shutdown() waits for every open call, and a stream blocked reading from a client that
        sends nothing cannot be interrupted from Python, so shutdown() runs on a daemon thread that is left
        behind after the grace. A process that must exit then has to `os._exit` (pyarrow's finalizer would
        call shutdown() again at interpreter exit and wait forever)."""
        self._closing.set()
        closer = threading.Thread(target=self.shutdown, daemon=True, name="flight-shutdown")
        closer.start()
        closer.join(grace)
        if closer.is_alive():
            log.warning(
                "%d Flight client stream(s) still open after %gs; not waiting for them",
                self.open_streams,
                grace,
            )
            return False
        return True


def _guard_handlers(cls: type) -> None:
    for name in HANDLERS:
        method = cls.__dict__.get(name)
        if method is not None and not getattr(method, "_flight_guarded", False):
            wrapped = _guarded(f"{cls.__name__}.{name}", method, stream=name == "do_exchange")
            wrapped._flight_guarded = True
            setattr(cls, name, wrapped)


_guard_handlers(FlightService)
