"""The wire level of the Python client: the one implementation of AIP-158 paging, waiting on Watch
streams, chunked uploads, Flight exchanges and the channel that carries the bearer token. The public client
(`flightline.client`) and the stub-level test helper (`flightline.server.client`) both use it."""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from flightline import errors
from flightline.v1 import deployment_pb2, model_pb2

DEFAULT_SERVER = "127.0.0.1:50051"
CHUNK = 1 << 20
MAX_MESSAGE = 64 * 1024 * 1024
MODEL_DONE = frozenset({model_pb2.MODEL_STATUS_READY, model_pb2.MODEL_STATUS_ERROR})
DEPLOYMENT_DONE = frozenset(
    {
        deployment_pb2.DEPLOYMENT_STATUS_RUNNING,
        deployment_pb2.DEPLOYMENT_STATUS_FAILED,
        deployment_pb2.DEPLOYMENT_STATUS_STOPPED,
    }
)


class _Stateful(Protocol):  # a ModelVersion or a Deployment message
    @property
    def status(self) -> int: ...


_T = TypeVar("_T", bound=_Stateful)


def every_page(rpc: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
    """The items of every page of a List RPC (AIP-158), e.g.
    every_page(stub.ListWorkspaces, ListWorkspacesRequest(), "workspaces")."""
    page = type(request)()
    page.CopyFrom(request)
    while True:
        response = rpc(page)
        yield from getattr(response, field)
        if not response.next_page_token:
            return
        page.page_token = response.next_page_token


def deployment_settled(deployment: deployment_pb2.Deployment) -> bool:
    """RUNNING, FAILED or STOPPED with no change (update, split, shadow) pending."""
    return deployment.status in DEPLOYMENT_DONE and not deployment.HasField("pending_revision")


def follow(
    watch: Callable[[float | None], Iterator[_T]],
    done: frozenset[int] | Callable[[_T], bool],
    on_status: Callable[[_T], None] | None = None,
    timeout: float | None = None,
) -> _T:
    """The last state of a Watch stream once it is in `done`, watching again when a stream ends before
    (a stream's lifetime is bounded by the server). `watch(seconds_left)` opens one stream."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished = done if callable(done) else (lambda state: state.status in done)
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        last = None
        for last in watch(left):
            if on_status is not None:
                on_status(last)
            if finished(last):
                return last
        if deadline is not None and time.monotonic() >= deadline:
            state = last.status if last is not None else "unknown"
            raise errors.DeadlineExceededError(f"still in state {state} after {timeout} s")


def upload_requests(
    path: Path, metadata: model_pb2.UploadMetadata, progress: Callable[[int], None] | None = None
) -> Iterator[model_pb2.UploadModelRequest]:
    """The UploadModel stream for a file: metadata with `size_bytes` and sha256 (so the server can refuse
    a truncated copy), then 1 MiB chunks; `progress` sees the bytes sent so far."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    meta = model_pb2.UploadMetadata()
    meta.CopyFrom(metadata)
    meta.filename = meta.filename or path.name
    meta.size_bytes = path.stat().st_size
    meta.sha256 = digest.hexdigest()
    yield model_pb2.UploadModelRequest(metadata=meta)
    sent = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield model_pb2.UploadModelRequest(chunk=block)
            sent += len(block)
            if progress is not None:
                progress(sent)


def exchange(
    conn: flight.FlightClient,
    path: list[str],
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    options: flight.FlightCallOptions | None = None,
) -> Generator[pa.RecordBatch, None, pa.Schema]:
    """Streams batches through `do_exchange` on descriptor `path`, one result batch per input batch (the
    server answers each batch before the next is sent, so memory stays at one batch). Returns the
    result schema (the generator's return value)."""
    writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path(*path), options=options)
    with writer:
        writer.begin(schema)
        for batch in batches:
            writer.write_batch(batch)
            yield reader.read_chunk().data
        writer.done_writing()
        result_schema: pa.Schema = reader.schema
    return result_schema


def exchange_answers(
    conn: flight.FlightClient,
    path: list[str],
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    options: flight.FlightCallOptions | None = None,
) -> Iterator[tuple[pa.RecordBatch, bytes]]:
    """As `exchange`, with each result batch's app metadata (which version answered; b"" if none)."""
    writer, reader = conn.do_exchange(flight.FlightDescriptor.for_path(*path), options=options)
    with writer:
        writer.begin(schema)
        for batch in batches:
            writer.write_batch(batch)
            chunk = reader.read_chunk()
            metadata = chunk.app_metadata
            yield chunk.data, metadata.to_pybytes() if metadata is not None else b""
        writer.done_writing()


def exchange_table(
    conn: flight.FlightClient,
    path: list[str],
    table: pa.Table,
    options: flight.FlightCallOptions | None = None,
) -> pa.Table:
    """A whole table through `exchange`; an empty input gives an empty table in the result schema."""
    results = []
    stream = exchange(conn, path, table.schema, table.to_batches(), options)
    while True:
        try:
            results.append(next(stream))
        except StopIteration as end:
            return pa.Table.from_batches(results, schema=None if results else end.value)


class _Metadata(
    collections.namedtuple(
        "_Metadata", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """Call details with extra metadata (grpc's own class cannot be built directly)."""


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a channel."""

    def __init__(self, extra: list[tuple[str, str]]) -> None:
        self.extra = extra

    def _details(self, details: Any) -> _Metadata:
        metadata = [*(details.metadata or ()), *self.extra]
        return _Metadata(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True)
class Tls:
    """TLS to the server: `ca` (PEM) verifies it (None: the system's roots); `cert` and `key` (PEM) are
    this client's own, for servers that ask for one (mTLS)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None = None, key: str | None = None) -> Tls | None:
        """From PEM files; None when no file is named (plain text)."""
        if not (ca or cert or key):
            return None
        if bool(cert) != bool(key):
            raise errors.InvalidArgumentError("a client certificate and its key go together")

        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).expanduser().read_bytes()
            except OSError as error:  # the caller's own file: name it, in one line
                raise errors.InvalidArgumentError(
                    f"cannot read the TLS file {path}: {error.strerror or error}"
                ) from None

        return cls(read(ca), read(cert), read(key))

    def flight_options(self) -> dict[str, Any]:
        """Keyword arguments of `pyarrow.flight.connect` for a grpc+tls:// location."""
        options: dict[str, Any] = {}
        if self.ca:
            options["tls_root_certs"] = self.ca
        if self.cert and self.key:
            options["cert_chain"], options["private_key"] = self.cert, self.key
        return options


def open_channel(address: str, token: str | None = None, tls: Tls | None = None) -> grpc.Channel:
    """A channel with 64 MiB messages (TLS with `tls`, else plain text) that sends
    `authorization: Bearer <token>` when a token is given."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    if tls is not None:
        credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if token:
        return grpc.intercept_channel(channel, _AddMetadata([("authorization", f"Bearer {token}")]))
    return channel
