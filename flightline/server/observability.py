"""Logs and metrics: one structured log line and a few Prometheus series per thing an operator cares about.

Logging. `configure_logging("text" | "json")` sets up the root logger (the CLI's `serve --log-format`,
or FLIGHTLINE_LOG_FORMAT). Event lines carry their fields as `extra=` attributes of the log record, so
the JSON formatter emits them as keys of one JSON object per line, and the text formatter appends them
as `key=value`. The fields by event (`event` names it):

- `rpc`: method, status (gRPC code name), duration_ms, workspace_id (when the request names one)
- `upload`: model, version, framework, runtime, status, bytes, sha256, conversion_ms, reason on error
- `deploy`: deployment, workspace_id, steps (`model_id:version,...`), status, reason on failure
- `flight_stream`: deployment, batches, rows, duration_ms, status
- `runtime_start` / `runtime_exit` / `runtime_unhealthy` / `runtime_restart` / `runtime_failed`: key
  (`<deployment>.<step>`), runtime, pid, exit_code, missed (healthchecks), restarts, reason

Nothing here logs a request body, a token or model data: only names, ids, sizes, codes and timings.

Metrics. Each `Metrics` owns a private `CollectorRegistry` (never the process-global one), so several
Apps in one process do not clash; `serve(host, port)` exposes it at `http://host:port/metrics` (port 0
picks a free port). The series and their labels:

- `flightline_build_info{version}` (always 1)
- `flightline_grpc_requests_total{method, code}`, `flightline_grpc_errors_total{method, code}` (code
  other than OK), `flightline_grpc_request_duration_seconds{method}` (histogram)
- `flightline_flight_streams_total{deployment, status}`, `flightline_flight_batches_total{deployment}`,
  `flightline_flight_rows_total{deployment}` (request batches and rows received),
  `flightline_flight_stream_duration_seconds{deployment}` (histogram)
- `flightline_runtime_starts_total{runtime}`, `flightline_runtime_exits_total{runtime}`,
  `flightline_runtime_restarts_total{runtime}`, `flightline_runtime_failures_total{runtime}`
- `flightline_uploads_total{framework, runtime, status}`, `flightline_upload_bytes_total{framework}`,
  `flightline_model_preparation_seconds{framework}` (histogram)
- `flightline_deploys_total{status}`
- `flightline_environment_builds_total{framework, status}` and
  `flightline_environment_build_seconds{framework}`: for the module that builds runtime environments,
  which calls `metrics.environment_builds.labels(framework=..., status="ok" | "error").inc()` and
  `metrics.environment_build_seconds.labels(framework=...).observe(seconds)`.

Labels hold only bounded values: method names the server registered, deployment names that exist
(an exchange naming an unknown deployment is refused before it is counted), framework and runtime
names from the catalog, status words from a fixed set.

Components get an `Observer` (logging + metrics) from the App through their `observer` attribute; one
built on its own (a test's Supervisor, a bare FrontDoor) reports to `DEFAULT`, whose registry is just as
private."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any
from wsgiref.simple_server import WSGIServer

import pyarrow as pa
import pyarrow.flight as flight
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from flightline import __version__
from flightline.server.store.records import Deployment, ModelVersion

LOG_FORMATS = ("text", "json")
DISABLED = -1  # metrics_port value that turns the metrics endpoint off
VERSION_HEADER = "x-flightline-version"

events = logging.getLogger("flightline.events")

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # default=str: an odd extra (a Path, an enum) must not cost the log line.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`; the extra fields go after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in fields_of(record).items())
        if not extra:
            return text
        head, newline, tail = text.partition("\n")  # keep a traceback below the fields
        return f"{head} {extra}{newline}{tail}"


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {list(LOG_FORMATS)}, not {log_format!r}")


def configure_logging(
    log_format: str = "text", level: int = logging.INFO, stream: IO[str] | None = None
) -> None:
    """Replaces the root logger's handlers by one writing `log_format` lines to `stream` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Metrics:
    """The Prometheus series of one server, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("flightline_build_info", "Flightline version.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.grpc_requests = Counter(
            "flightline_grpc_requests",
            "gRPC requests by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_errors = Counter(
            "flightline_grpc_errors",
            "gRPC requests that ended with a code other than OK.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            "flightline_grpc_request_duration_seconds", "gRPC request duration.", ["method"], registry=r
        )
        self.flight_streams = Counter(
            "flightline_flight_streams",
            "Flight exchanges at the front door.",
            ["deployment", "status"],
            registry=r,
        )
        self.flight_batches = Counter(
            "flightline_flight_batches", "Request batches received.", ["deployment"], registry=r
        )
        self.flight_rows = Counter(
            "flightline_flight_rows", "Request rows received.", ["deployment"], registry=r
        )
        self.flight_latency = Histogram(
            "flightline_flight_stream_duration_seconds",
            "Flight exchange duration.",
            ["deployment"],
            registry=r,
        )
        self.runtime_starts = Counter(
            "flightline_runtime_starts", "Runtime processes started.", ["runtime"], registry=r
        )
        self.runtime_exits = Counter(
            "flightline_runtime_exits", "Runtime processes that exited unasked.", ["runtime"], registry=r
        )
        self.runtime_restarts = Counter(
            "flightline_runtime_restarts", "Runtime processes restarted.", ["runtime"], registry=r
        )
        self.runtime_failures = Counter(
            "flightline_runtime_failures", "Runtime processes given up on.", ["runtime"], registry=r
        )
        self.uploads = Counter(
            "flightline_uploads", "Model versions prepared.", ["framework", "runtime", "status"], registry=r
        )
        self.upload_bytes = Counter(
            "flightline_upload_bytes", "Bytes of uploaded artifacts.", ["framework"], registry=r
        )
        self.preparation_latency = Histogram(
            "flightline_model_preparation_seconds",
            "Inspection and conversion time of a model version.",
            ["framework"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.deploys = Counter("flightline_deploys", "Deploys by outcome.", ["status"], registry=r)
        self.deployment_changes = Counter(
            "flightline_deployment_changes",
            "Updates, traffic split and shadow changes of live deployments, by outcome (live, failed).",
            ["status"],
            registry=r,
        )
        self.shadow_batches = Counter(
            "flightline_shadow_batches",
            "Request batches mirrored to a shadow, by outcome (ok, failed, dropped: its queue was full).",
            ["deployment", "outcome"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "flightline_shadow_rows", "Rows a shadow answered.", ["deployment"], registry=r
        )
        self.shadow_disagreements = Counter(
            "flightline_shadow_disagreeing_rows",
            "Rows whose shadow answer differed from the deployment's.",
            ["deployment"],
            registry=r,
        )
        self.shadow_latency = Histogram(
            "flightline_shadow_batch_duration_seconds",
            "Time a shadow took per batch.",
            ["deployment"],
            registry=r,
        )
        self.environment_builds = Counter(
            "flightline_environment_builds",
            "Runtime environment builds.",
            ["framework", "status"],
            registry=r,
        )
        self.environment_build_seconds = Histogram(
            "flightline_environment_build_seconds",
            "Runtime environment build time.",
            ["framework"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200),
            registry=r,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as /metrics serves it."""
        return bytes(generate_latest(self.registry))

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics on `host:port` (0: a free port) from a daemon thread; returns the port bound,
        or DISABLED (and serves nothing) when `port` is DISABLED."""
        if port == DISABLED:
            return DISABLED
        if port < 0:
            raise ValueError(f"metrics_port must be >= 0 or {DISABLED} (off), not {port}")
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _flight_status(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, flight.FlightCancelledError):
        return "cancelled"
    if isinstance(error, flight.FlightUnavailableError):
        return "unavailable"
    if isinstance(error, flight.FlightInternalError):
        return "internal"
    if isinstance(error, pa.ArrowInvalid):
        return "invalid_argument"
    return "error"


class FlightStream:
    """One exchange at the front door: counts what the client sent, logs and records it at `end()`."""

    def __init__(self, observer: Observer, deployment: str) -> None:
        self.observer = observer
        self.deployment = deployment
        self.batches = 0
        self.rows = 0
        self.error: BaseException | None = None
        self._started = time.monotonic()

    def count(self, chunks: Iterable[flight.FlightStreamChunk]) -> Iterator[flight.FlightStreamChunk]:
        for chunk in chunks:
            if chunk.data is not None:
                self.batches += 1
                self.rows += chunk.data.num_rows
            yield chunk

    def failed(self, error: BaseException) -> None:
        self.error = error

    def end(self) -> None:
        seconds = time.monotonic() - self._started
        status = _flight_status(self.error)
        m, d = self.observer.metrics, self.deployment
        m.flight_streams.labels(deployment=d, status=status).inc()
        m.flight_batches.labels(deployment=d).inc(self.batches)
        m.flight_rows.labels(deployment=d).inc(self.rows)
        m.flight_latency.labels(deployment=d).observe(seconds)
        fields = {
            "event": "flight_stream",
            "deployment": d,
            "batches": self.batches,
            "rows": self.rows,
            "duration_ms": _ms(seconds),
            "status": status,
        }
        level = logging.INFO if status in ("ok", "invalid_argument", "cancelled") else logging.WARNING
        events.log(
            level,
            "flight stream %s %s: %d rows in %d batches",
            d,
            status,
            self.rows,
            self.batches,
            extra=fields,
        )


class Observer:
    """What components call when something happened: it logs the event line and updates the metrics."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()

    def close(self) -> None:
        self.metrics.close()

    # -- control plane ----------------------------------------------------------------------------

    def rpc(self, method: str, code: str, seconds: float, workspace_id: int | None = None) -> None:
        self.metrics.grpc_requests.labels(method=method, code=code).inc()
        if code != "OK":
            self.metrics.grpc_errors.labels(method=method, code=code).inc()
        self.metrics.grpc_latency.labels(method=method).observe(seconds)
        fields: dict[str, Any] = {
            "event": "rpc",
            "method": method,
            "status": code,
            "duration_ms": _ms(seconds),
        }
        if workspace_id is not None:
            fields["workspace_id"] = workspace_id
        events.info("rpc %s %s %.1fms", method, code, seconds * 1000, extra=fields)

    def upload_finished(self, version: ModelVersion, uploaded_bytes: int) -> ModelVersion:
        """A version reached READY or ERROR; returns it, so the hook wraps the call that produced it."""
        seconds = max(0.0, (version.updated_at - version.created_at).total_seconds())
        status = version.status.value
        m = self.metrics
        m.uploads.labels(framework=version.framework, runtime=version.runtime, status=status).inc()
        m.upload_bytes.labels(framework=version.framework).inc(uploaded_bytes)
        m.preparation_latency.labels(framework=version.framework).observe(seconds)
        fields: dict[str, Any] = {
            "event": "upload",
            "model": version.model_name,
            "model_id": version.model_id,
            "version": version.version,
            "framework": version.framework,
            "runtime": version.runtime,
            "status": status,
            "bytes": uploaded_bytes,
            "sha256": version.original_sha256,
            "conversion_ms": _ms(seconds),
        }
        if version.status_reason:
            fields["reason"] = version.status_reason
        events.info(
            "upload %s v%d (%s, %d bytes): %s on runtime %s",
            version.model_name,
            version.version,
            version.framework,
            uploaded_bytes,
            status,
            version.runtime,
            extra=fields,
        )
        return version

    def deployed(self, deployment: Deployment) -> Deployment:
        """A deploy reached its outcome; returns the deployment, so the hook wraps the call."""
        status = deployment.status.value
        self.metrics.deploys.labels(status=status).inc()
        steps = ",".join(f"{s.model_id}:{s.version}" for s in deployment.steps)
        fields: dict[str, Any] = {
            "event": "deploy",
            "deployment": deployment.name,
            "workspace_id": deployment.workspace_id,
            "steps": steps,
            "status": status,
        }
        if deployment.status_reason:
            fields["reason"] = deployment.status_reason
        level = logging.WARNING if status == "failed" else logging.INFO
        events.log(level, "deploy %s [%s]: %s", deployment.name, steps, status, extra=fields)
        return deployment

    def deployment_changed(
        self, deployment: Deployment, revision: int, status: str, reason: str = ""
    ) -> None:
        """An update, split or shadow change of a live deployment went live or failed."""
        self.metrics.deployment_changes.labels(status=status).inc()
        fields: dict[str, Any] = {
            "event": "deployment_change",
            "deployment": deployment.name,
            "workspace_id": deployment.workspace_id,
            "revision": revision,
            "status": status,
        }
        if reason:
            fields["reason"] = reason
        level = logging.WARNING if status == "failed" else logging.INFO
        events.log(level, "deployment %s revision %d: %s", deployment.name, revision, status, extra=fields)

    def shadow_batch(
        self, deployment: str, outcome: str, seconds: float, rows: int, disagreeing: int
    ) -> None:
        """One batch mirrored to a deployment's shadow (dataplane/shadow.py); no log line per batch."""
        self.metrics.shadow_batches.labels(deployment=deployment, outcome=outcome).inc()
        if outcome == "dropped":
            return
        self.metrics.shadow_latency.labels(deployment=deployment).observe(seconds)
        self.metrics.shadow_rows.labels(deployment=deployment).inc(rows)
        if disagreeing:
            self.metrics.shadow_disagreements.labels(deployment=deployment).inc(disagreeing)

    # -- data plane -------------------------------------------------------------------------------

    def flight_stream(self, deployment: str) -> FlightStream:
        return FlightStream(self, deployment)

    # -- runtime processes ------------------------------------------------------------------------

    def runtime_started(self, key: str, runtime: str, pid: int) -> None:
        self.metrics.runtime_starts.labels(runtime=runtime).inc()
        events.info(
            "runtime %s (%s) started, pid %d",
            key,
            runtime,
            pid,
            extra={"event": "runtime_start", "key": key, "runtime": runtime, "pid": pid},
        )

    def runtime_exited(self, key: str, runtime: str, exit_code: int | None) -> None:
        self.metrics.runtime_exits.labels(runtime=runtime).inc()
        events.warning(
            "runtime %s exited with code %s; restarting",
            key,
            exit_code,
            extra={"event": "runtime_exit", "key": key, "runtime": runtime, "exit_code": exit_code},
        )

    def runtime_unhealthy(self, key: str, runtime: str, missed: int) -> None:
        events.warning(
            "runtime %s failed %d healthchecks; restarting",
            key,
            missed,
            extra={"event": "runtime_unhealthy", "key": key, "runtime": runtime, "missed": missed},
        )

    def runtime_restarted(self, key: str, runtime: str, pid: int, restarts: int) -> None:
        self.metrics.runtime_restarts.labels(runtime=runtime).inc()
        events.info(
            "runtime %s (%s) restarted, pid %d (restart %d)",
            key,
            runtime,
            pid,
            restarts,
            extra={
                "event": "runtime_restart",
                "key": key,
                "runtime": runtime,
                "pid": pid,
                "restarts": restarts,
            },
        )

    def runtime_failed(self, key: str, runtime: str, reason: str) -> None:
        self.metrics.runtime_failures.labels(runtime=runtime).inc()
        events.error(
            "runtime %s failed for good: %s",
            key,
            reason,
            extra={"event": "runtime_failed", "key": key, "runtime": runtime, "reason": reason},
        )


DEFAULT = Observer()
