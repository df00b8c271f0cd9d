"""The local-process backend: one runtime server process per ServerGroup, on this machine.

Each process runs `python -m flightline.runtimes.server --listen <location> --artifacts <folder>`, starts
empty, announces `FLIGHTLINE_READY <location>` and gets its models by `load` actions. A watcher per
process health-checks it; when it dies (or misses `health_failures` checks in a row) it is restarted on
the same location (a unix socket path, or the same TCP port) and every model it hosted is loaded again,
so routes that hold the location stay valid. A model that no longer loads is reported to `on_failure`;
a server that cannot be started `max_start_failures` times in a row fails all of its models.

A runtime must not outlive the control plane nor see its secrets: each one exits at the end of its stdin,
a pipe whose write end this process keeps open (so it closes when this process dies, even by SIGKILL),
and its environment and user come from `launch_options` (the one place the sandbox changes)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any, Final, Literal

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.server import EXIT_WITH_STDIN, READY, LoadSpec, remote_error_message
from flightline.server.errors import NotFound, Unavailable
from flightline.server.hosting.artifacts import ArtifactFolder
from flightline.server.hosting.backend import LoadRequest, ServerGroup
from flightline.server.store.artifacts import ArtifactStore

STDERR_TAIL_LINES: Final = 20
# Model code is user code: it gets no control-plane settings and nothing that looks like a credential.
_WITHHELD_VARIABLE = re.compile(r"^FLIGHTLINE_|TOKEN|SECRET|PASSWORD|CREDENTIAL|_KEY$", re.IGNORECASE)

log = logging.getLogger(__name__)

Transport = Literal["unix", "tcp"]


class State(Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


def runtime_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a runtime process gets: `environ` without FLIGHTLINE_* variables and without any
    whose name contains TOKEN, SECRET, PASSWORD or CREDENTIAL or ends with _KEY (in any case)."""
    env = {name: value for name, value in environ.items() if not _WITHHELD_VARIABLE.search(name)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_options(group: ServerGroup) -> dict[str, Any]:
    """Where a runtime server's environment (and, later, user and limits) come from: extra keyword
    arguments for `subprocess.Popen`. The one place the sandbox replaces (helper "sandbox")."""
    del group  # every group runs with the server's own interpreter for now
    return {"env": runtime_environment(os.environ)}


@dataclass
class ServerProcess:
    """One runtime server and the models it hosts. Fields change under the backend's lock; `_ops`
    serializes starting, restarting and model loads on this server."""

    group: ServerGroup
    location: str = ""
    pid: int = 0
    restarts: int = 0
    state: State = State.STARTING
    failure: str | None = None
    models: dict[str, LoadRequest] = field(default_factory=dict)
    _popen: subprocess.Popen[str] | None = field(default=None, repr=False)
    _client: flight.FlightClient | None = field(default=None, repr=False)
    _stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES), repr=False)
    _ops: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY and self._popen is not None and self._popen.poll() is None


class LocalBackend:
    """Runtime servers as local processes. `on_failure(key, reason)` is called (from a watcher thread,
    outside every lock) for each model that failed for good."""

    def __init__(
        self,
        workdir: Path,
        artifacts: ArtifactStore,
        *,
        transport: Transport = "unix",
        host: str = "127.0.0.1",
        python: str = sys.executable,
        check_interval: float = 0.5,
        health_timeout: float = 5.0,
        health_failures: int = 3,
        max_start_failures: int = 3,
        start_timeout: float = 60.0,
        load_timeout: float = 120.0,
        stop_grace: float = 5.0,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.artifacts = ArtifactFolder(artifacts, workdir / "artifacts", workdir / "cache")
        self.transport = transport
        self.host = host
        self.python = python
        self.check_interval = check_interval
        self.health_timeout = health_timeout
        # A busy runtime may miss one health deadline; only a run of misses means it is wedged.
        self.health_failures = health_failures
        self.max_start_failures = max_start_failures
        self.start_timeout = start_timeout
        self.load_timeout = load_timeout
        self.stop_grace = stop_grace
        self.on_failure = on_failure
        # Unix socket paths are limited to ~107 bytes: a short folder of our own, not under workdir.
        self._sockets = Path(tempfile.mkdtemp(prefix="flightline-rt-"))
        self._servers: dict[ServerGroup, ServerProcess] = {}
        self._instances = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # -- Backend ------------------------------------------------------------------------------------

    def ensure_server(self, group: ServerGroup) -> str:
        return self._ensure(group).location

    def load(self, group: ServerGroup, model: LoadRequest) -> None:
        self.artifacts.place(model.artifact, unpack=model.unpack)
        for _ in range(2):  # the server found may be stopping because its last model just left
            proc = self._ensure(group)
            with proc._ops:
                # A restart holds `_ops` until its models are back, so this waits for it to finish.
                if proc.state is State.FAILED:
                    raise ModelLoadError(proc.failure or f"runtime server {group.name} failed")
                if proc._stopping.is_set():
                    continue
                self._load_on(proc, model)
                with self._lock:
                    proc.models[model.key] = model
                return
        raise ModelLoadError(f"runtime server {group.name} is stopping")

    def unload(self, group: ServerGroup, key: str) -> None:
        with self._lock:
            proc = self._servers.get(group)
        if proc is None:
            return
        with proc._ops:
            with self._lock:
                known = proc.models.pop(key, None) is not None
                empty = not proc.models and self._servers.get(group) is proc
                if empty:  # under the lock: a load that comes next starts a fresh server
                    del self._servers[group]
                    proc._stopping.set()
            if known and proc.healthy and not empty:
                try:
                    self._action(proc, "unload", key.encode(), self.health_timeout)
                except (flight.FlightError, pa.ArrowException, OSError) as error:  # gone is gone
                    log.info("unload of %s on %s: %s", key, group.name, remote_error_message(error))
        if empty:  # an idle server would hold an interpreter for nothing
            self._shutdown(proc)

    def healthy(self, group: ServerGroup) -> bool:
        with self._lock:
            proc = self._servers.get(group)
        return proc is not None and proc.healthy

    def close(self) -> None:
        with self._lock:
            groups = list(self._servers)
        for group in groups:
            self._stop(group)
        shutil.rmtree(self._sockets, ignore_errors=True)

    # -- for operators and tests --------------------------------------------------------------------

    def server(self, group: ServerGroup) -> ServerProcess:
        with self._lock:
            try:
                return self._servers[group]
            except KeyError:
                raise NotFound(f"no runtime server for {group.name}") from None

    def groups(self) -> list[ServerGroup]:
        with self._lock:
            return list(self._servers)

    def wait_healthy(self, group: ServerGroup, timeout: float) -> ServerProcess:
        """Blocks until the group's server serves (e.g. after a restart). Raises ModelLoadError if it
        failed for good, Unavailable if it is not healthy within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                proc = self._servers.get(group)
                if proc is None:
                    raise NotFound(f"no runtime server for {group.name}")
                # A process that just died still reads HEALTHY until its watcher wakes; `healthy` polls.
                if proc.healthy:
                    return proc
                if proc.state is State.FAILED:
                    raise ModelLoadError(proc.failure or "runtime server failed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"runtime server {group.name} is not healthy after {timeout:g}s ({proc.state.value})"
                    )
                self._changed.wait(min(remaining, self.check_interval))

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- process lifecycle --------------------------------------------------------------------------

    def _ensure(self, group: ServerGroup) -> ServerProcess:
        with self._lock:
            proc = self._servers.get(group)
            created = proc is None
            if proc is None:
                proc = self._servers[group] = ServerProcess(group)
        with proc._ops:
            if created:
                try:
                    self._launch(proc, self._first_location(group))
                except BaseException:
                    with self._lock:
                        self._servers.pop(group, None)
                    self._terminate(proc, grace=0.0)
                    raise
                self._set_state(proc, State.HEALTHY)
                proc._watcher = threading.Thread(
                    target=self._watch, args=(proc,), daemon=True, name=f"runtime-{group.name}"
                )
                proc._watcher.start()
        if proc.state is State.FAILED:
            raise ModelLoadError(proc.failure or f"runtime server {group.name} failed")
        return proc

    def _first_location(self, group: ServerGroup) -> str:
        if self.transport == "unix":
            # One path per server instance (kept across its restarts): a server started for the group
            # while its predecessor still shuts down must not share, nor lose, the socket file.
            return f"grpc+unix://{self._sockets / group.name}-{next(self._instances)}.sock"
        return f"grpc+tcp://{self.host}:0"

    def _launch(self, proc: ServerProcess, listen: str) -> None:
        """Spawns the runtime server and waits for its READY line. Raises ModelLoadError."""
        cmd = [
            self.python,
            "-m",
            "flightline.runtimes.server",
            "--listen",
            listen,
            "--artifacts",
            str(self.artifacts.folder),
            EXIT_WITH_STDIN,
        ]
        # Own session = own process group, so a stop reaches whatever the runtime spawned. The stdin pipe
        # stays open (unwritten) for the process's life: its end is the runtime's signal to exit.
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
                **launch_options(proc.group),
            )
        except OSError as exc:
            raise ModelLoadError(f"cannot start the runtime server: {exc}") from exc
        proc._stderr_tail.clear()
        announcements: queue.Queue[str | None] = queue.Queue()
        name = proc.group.name
        threading.Thread(
            target=self._drain_stdout, args=(proc, popen, announcements), daemon=True, name=f"stdout-{name}"
        ).start()
        stderr_drain = threading.Thread(
            target=self._drain_stderr, args=(proc, popen.stderr), daemon=True, name=f"stderr-{name}"
        )
        stderr_drain.start()
        with self._lock:
            proc._popen = popen
            proc.pid = popen.pid
        try:
            line = announcements.get(timeout=self.start_timeout)
        except queue.Empty:
            self._terminate(proc, grace=0.0)
            raise ModelLoadError(
                self._reason(proc, f"runtime server did not become ready within {self.start_timeout:g}s")
            ) from None
        if line is None:
            try:
                popen.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                self._terminate(proc, grace=0.0)
            stderr_drain.join(timeout=1.0)
            raise ModelLoadError(
                self._reason(proc, f"runtime server exited with code {popen.returncode} before it was ready")
            )
        location = line.removeprefix(READY).strip()
        client = flight.connect(location)
        with self._lock:
            proc.location = location
            old, proc._client = proc._client, client
        if old is not None:
            old.close()

    def _drain_stdout(
        self, proc: ServerProcess, popen: subprocess.Popen[str], announcements: queue.Queue[str | None]
    ) -> None:
        assert popen.stdout is not None
        announced = False
        for line in popen.stdout:
            line = line.rstrip("\n")
            if not announced and line.startswith(READY):
                announced = True
                announcements.put(line)
            else:
                log.info("[%s] %s", proc.group.name, line)
        if not announced:
            announcements.put(None)
        # EOF: the process is gone (or closed stdout); let the watcher look now, not at its next tick.
        proc._wake.set()

    @staticmethod
    def _drain_stderr(proc: ServerProcess, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            proc._stderr_tail.append(line)
            log.info("[%s] %s", proc.group.name, line)

    @staticmethod
    def _reason(proc: ServerProcess, reason: str) -> str:
        # The stderr tail goes to the log only: it may hold paths and tracebacks clients must not see.
        tail = "\n".join(proc._stderr_tail)
        if tail:
            log.warning(
                "runtime server %s: %s\n--- stderr (last lines) ---\n%s", proc.group.name, reason, tail
            )
        return reason

    def _action(self, proc: ServerProcess, kind: str, body: bytes, timeout: float) -> list[bytes]:
        client = proc._client
        if client is None:
            raise Unavailable(f"runtime server {proc.group.name} is not running")
        options = flight.FlightCallOptions(timeout=timeout)
        return [r.body.to_pybytes() for r in client.do_action(flight.Action(kind, body), options)]

    def _load_on(self, proc: ServerProcess, model: LoadRequest) -> None:
        spec = LoadSpec(
            key=model.key,
            runtime=model.runtime,
            artifact=model.artifact,
            framework=model.framework,
            input_schema=model.input_schema,
            output_schema=model.output_schema,
            options=dict(model.options),
        )
        try:
            self._action(proc, "load", spec.to_json(), self.load_timeout)
        except pa.ArrowInvalid as error:  # INVALID_ARGUMENT: the model's own load error
            raise ModelLoadError(remote_error_message(error)) from None
        except (flight.FlightError, pa.ArrowException, OSError) as error:
            log.warning("load of %s on %s failed: %s", model.key, proc.group.name, error)
            raise ModelLoadError(f"runtime server {proc.group.name} did not load the model") from None

    def _stop(self, group: ServerGroup) -> None:
        with self._lock:
            proc = self._servers.pop(group, None)
        if proc is not None:
            self._shutdown(proc)

    def _shutdown(self, proc: ServerProcess) -> None:
        """Ends a server already taken out of `_servers`."""
        proc._stopping.set()
        proc._wake.set()
        with proc._ops:
            self._terminate(proc, grace=self.stop_grace)
        if proc._watcher is not None and proc._watcher is not threading.current_thread():
            proc._watcher.join(timeout=self.stop_grace + 1)
        self._set_state(proc, State.STOPPED)
        if proc.location.startswith("grpc+unix://"):
            Path(proc.location.removeprefix("grpc+unix://")).unlink(missing_ok=True)

    def _terminate(self, proc: ServerProcess, *, grace: float) -> None:
        """SIGTERM the process group, then SIGKILL it if it outlives the grace period."""
        popen = proc._popen
        with self._lock:
            client, proc._client = proc._client, None
        if client is not None:
            client.close()
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _set_state(self, proc: ServerProcess, state: State, failure: str | None = None) -> bool:
        """Moves `proc` to `state`; False (and no change) once it is STOPPED."""
        with self._changed:
            if proc.state is State.STOPPED:
                return False
            proc.state = state
            if failure is not None:
                proc.failure = failure
            self._changed.notify_all()
            return True

    # -- watching -----------------------------------------------------------------------------------

    def _watch(self, proc: ServerProcess) -> None:
        missed = 0
        started_at = time.monotonic()
        crash_delay = 0.0
        while not proc._stopping.is_set():
            proc._wake.wait(self.check_interval)
            proc._wake.clear()
            if proc._stopping.is_set():
                break
            popen = proc._popen
            if popen is None or popen.poll() is not None:
                code = None if popen is None else popen.returncode
                log.warning("runtime server %s exited with code %s; restarting", proc.group.name, code)
            else:
                if self._answers_healthcheck(proc):
                    missed = 0
                    continue
                missed += 1
                if missed < self.health_failures:
                    continue
                log.warning("runtime server %s failed %d healthchecks; restarting", proc.group.name, missed)
            missed = 0
            # A process that dies soon after each start backs off; one that ran a while restarts at once.
            crash_delay = min(max(crash_delay * 2, 0.2), 10.0) if time.monotonic() - started_at < 10 else 0.0
            if proc._stopping.wait(crash_delay) or not self._restart(proc):
                break
            started_at = time.monotonic()

    def _answers_healthcheck(self, proc: ServerProcess) -> bool:
        try:
            return self._action(proc, "healthcheck", b"", self.health_timeout) == [b"ok"]
        except (flight.FlightError, pa.ArrowException, OSError, Unavailable):
            return False

    def _restart(self, proc: ServerProcess) -> bool:
        """Restarts on the same location and reloads its models, with exponential backoff between
        attempts; returns False once the server failed for good or is being stopped."""
        self._set_state(proc, State.RESTARTING)
        failed: list[tuple[str, str]] = []
        started = False
        with proc._ops:
            delay = 0.1
            for attempt in range(1, self.max_start_failures + 1):
                if proc._stopping.is_set():
                    return False
                self._terminate(proc, grace=0.0)
                with self._lock:
                    proc.restarts += 1
                try:
                    self._launch(proc, proc.location)
                except ModelLoadError as exc:
                    log.warning("restart %d of %s failed: %s", attempt, proc.group.name, exc)
                    if attempt == self.max_start_failures:
                        with self._lock:
                            failed = [(key, str(exc)) for key in proc.models]
                            proc.models.clear()
                            if self._servers.get(proc.group) is proc:  # the next load starts afresh
                                del self._servers[proc.group]
                        self._set_state(proc, State.FAILED, failure=str(exc))
                        break
                    proc._stopping.wait(delay)
                    delay = min(delay * 4, 10.0)
                    continue
                started = True
                break
            if started:
                with self._lock:
                    models = list(proc.models.values())
                for model in models:
                    try:
                        self._load_on(proc, model)
                    except ModelLoadError as exc:
                        with self._lock:
                            proc.models.pop(model.key, None)
                        failed.append((model.key, str(exc)))
                self._set_state(proc, State.HEALTHY)
        for key, reason in failed:  # outside every lock: the callback undeploys, which unloads
            log.error("model %s failed for good: %s", key, reason)
            self._report_failure(key, reason)
        return started

    def _report_failure(self, key: str, reason: str) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(key, reason)
        except Exception:  # the watcher goes on either way; the callback's bug must not vanish silently
            log.exception("on_failure callback for %s failed", key)
