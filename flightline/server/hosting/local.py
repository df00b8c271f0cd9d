"""The local-process backend: one runtime server process per ServerGroup, on this machine.

Each process runs `python -m flightline.runtimes.server --listen <location> --artifacts <folder>`, starts
empty, announces `FLIGHTLINE_READY <location>` and gets its models by `load` actions. A watcher per
process health-checks it; when it dies (or misses `health_failures` checks in a row) it is restarted on
the same location (a unix socket path, or the same TCP port) and every model it hosted is loaded again,
so routes that hold the location stay valid. A model that no longer loads is reported to `on_failure`.

Two kinds of failure: a load error of the model itself (the `load` action answers INVALID_ARGUMENT:
loading again gives the same answer) fails that model at once (`ModelLoadError`); a fault of the moment
(the server process could not listen, crashed or said nothing before it was ready, did not start in
time) is retried with exponential backoff (`FIRST_RETRY_DELAY` doubling up to `MAX_RETRY_DELAY`) until
`retry_for` seconds have passed, then fails every model of the server with the last reason
(`RuntimeFault`, which callers record as FAILED by a fault: start-up retries those).

A runtime must not outlive the control plane nor see its secrets: each one exits at the end of its stdin,
a pipe whose write end this process keeps open (so it closes when this process dies, even by SIGKILL),
and it is started by the `Sandbox` (`launch_options`): allow-listed environment, limits, an unprivileged
user when the server runs as root. Its working folder (which also holds its unix socket: reachable by
the group's sandbox user and root only) and its read-only artifacts folder lie under `workdir`, which must be
traversable by the sandbox user (the App puts it in the sandbox's root, outside the 0700 data folder)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Final, Literal

import pyarrow as pa
import pyarrow.flight as flight

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.flight_service import runtime_client
from flightline.runtimes.server import (
    EXIT_WITH_STDIN,
    LISTEN_ERROR_EXIT_CODE,
    READY,
    SECRET_STDIN,
    LoadSpec,
    remote_error_message,
)
from flightline.server.errors import NotFound, Unavailable
from flightline.server.hosting.artifacts import ArtifactFolder
from flightline.server.hosting.backend import SERVER_ENVIRONMENT, SHARED, LoadRequest, ServerGroup
from flightline.server.hosting.environments import Environments
from flightline.server.hosting.sandbox import Launch, Sandbox, SandboxError, private_dir
from flightline.server.observability import DEFAULT, Observer
from flightline.server.store.artifacts import ArtifactStore

STDERR_TAIL_LINES: Final = 20
# A taken port or a crash at start is usually over within seconds; a minute of retries covers a slow
# restart of whatever held the port without hiding a real outage for long.
RETRY_FOR_SECONDS: Final = 60.0
FIRST_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 5.0

log = logging.getLogger(__name__)

Transport = Literal["unix", "tcp"]


class State(Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class RuntimeFault(Unavailable):
    """A runtime server could not start for a reason other than a model (could not listen, crash or
    silence before it was ready, start-up timeout, no answer to a load). Retried; retrying later may help."""


def launch_options(sandbox: Sandbox, cmd: list[str], name: str, group: ServerGroup) -> Launch:
    """How a runtime server process is started: through the sandbox (allow-listed environment, the
    group's sandbox user when root, limits, its own session and working folder `name`). `cmd[0]` is the
    interpreter of the group's environment (`LocalBackend.interpreter`)."""
    return sandbox.launch(cmd, name=name, user=group_user(sandbox, group))


def group_user(sandbox: Sandbox, group: ServerGroup) -> str | None:
    """The user a group's server runs as: a workspace's user code gets a pool user of its own (one uid
    per trust group, so workspaces cannot reach each other's processes, folders or sockets); data-only
    artifacts of the shared group keep the sandbox's default user. None without root."""
    return None if group.trust == SHARED else sandbox.user_for(group.trust)


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
    failed_by_fault: bool = False  # FAILED by a RuntimeFault (retryable), not by a model's load error
    instance: str = ""  # the sandbox name of this server instance: its working folder (and socket)
    # Demanded of every caller; the same across restarts, so routes to it keep working. Handed to the
    # process on stdin, never on its command line (which every local user can read).
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
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
    """Runtime servers as local processes. `on_failure(key, reason, by_fault)` is called (from a watcher
    thread, outside every lock) for each model that failed for good; `by_fault` tells a RuntimeFault from
    the model's own load error."""

    observer: Observer = DEFAULT  # the App sets its own: runtime starts, exits, restarts, failures

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
        retry_for: float = RETRY_FOR_SECONDS,
        start_timeout: float = 60.0,
        load_timeout: float = 120.0,
        stop_grace: float = 5.0,
        on_failure: Callable[[str, str, bool], None] | None = None,
        sandbox: Sandbox | None = None,
        environments: Environments | None = None,
    ) -> None:
        self.workdir = workdir
        self.environments = environments or Environments()
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o711)  # traversable by the sandbox user, not listable
        # Without one: a sandbox of our own that keeps the server's user, in the system temp dir (unix
        # socket paths, which lie in it, are limited to ~107 bytes), removed by close().
        self._own_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox.temporary(user=None)
        self.store = artifacts
        self._cache = private_dir(workdir / "cache")  # downloads from a remote store: server-only
        self._artifact_folders: dict[ServerGroup, ArtifactFolder] = {}
        self.transport = transport
        self.host = host
        self.python = python
        self.check_interval = check_interval
        self.health_timeout = health_timeout
        # A busy runtime may miss one health deadline; only a run of misses means it is wedged.
        self.health_failures = health_failures
        self.retry_for = retry_for
        self.start_timeout = start_timeout
        self.load_timeout = load_timeout
        self.stop_grace = stop_grace
        self.on_failure = on_failure
        self._servers: dict[ServerGroup, ServerProcess] = {}
        self._failed: dict[ServerGroup, ServerProcess] = {}  # the last server of a group that failed for good
        self._instances = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # -- Backend ------------------------------------------------------------------------------------

    def ensure_server(self, group: ServerGroup) -> str:
        return self._ensure(group).location

    def secret(self, group: ServerGroup) -> str:
        return self._ensure(group).secret

    def load(self, group: ServerGroup, model: LoadRequest) -> None:
        """Loads `model`; a server that died during the load (a fault, not the model's answer) is given
        `retry_for` seconds, with backoff, to come back and take the load."""
        self.artifacts(group).place(model.artifact, unpack=model.unpack)
        deadline = time.monotonic() + self.retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                self._load_once(group, model)
                return
            except _LoadFault as fault:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeFault(str(fault)) from None
                log.warning("load of %s failed (%s); retrying in %.1fs", model.key, fault, delay)
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_RETRY_DELAY)

    def _load_once(self, group: ServerGroup, model: LoadRequest) -> None:
        for _ in range(2):  # the server found may be stopping because its last model just left
            proc = self._ensure(group)
            with proc._ops:
                # A restart holds `_ops` until its models are back, so this waits for it to finish.
                if proc.state is State.FAILED:
                    raise _failure(proc)
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
        if self._own_sandbox:
            self.sandbox.close()

    def artifacts(self, group: ServerGroup) -> ArtifactFolder:
        """The group's artifacts folder: read-only copies (or links to read-only store files) the sandbox
        user can read, one folder per group so a server finds only the artifacts of its own models."""
        with self._lock:
            folder = self._artifact_folders.get(group)
            if folder is None:
                folder = self._artifact_folders[group] = ArtifactFolder(
                    self.store, self.workdir / "artifacts" / group.name, self._cache
                )
            return folder

    def interpreter(self, group: ServerGroup) -> str:
        """The Python of the group's environment: the server's own, or a built environment's (which
        the sandbox user can run: the cache is 0755 and the venv links to an interpreter it may
        execute). An environment removed since the deploy is a set-up error: retrying does not cure it."""
        if group.environment == SERVER_ENVIRONMENT:
            return self.python
        env = self.environments.get(group.environment)
        if env is None:
            raise ModelLoadError(
                f"the environment {group.environment} of runtime server {group.name} is not built any "
                "more; re-upload the model version (or run `flightline runtimes install`) to rebuild it"
            )
        return str(env.python)

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
                if proc is None and group in self._failed:
                    raise _failure(self._failed[group])
                if proc is None:
                    raise NotFound(f"no runtime server for {group.name}")
                # A process that just died still reads HEALTHY until its watcher wakes; `healthy` polls.
                if proc.healthy:
                    return proc
                if proc.state is State.FAILED:
                    raise _failure(proc)
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
                self._failed.pop(group, None)
        with proc._ops:
            if created:
                try:
                    self._launch_retrying(proc, self._first_location(proc))
                except BaseException:
                    with self._lock:
                        self._servers.pop(group, None)
                    self._terminate(proc, grace=0.0)
                    raise
                self._set_state(proc, State.HEALTHY)
                self.observer.runtime_started(group.name, group.environment, proc.pid)
                proc._watcher = threading.Thread(
                    target=self._watch, args=(proc,), daemon=True, name=f"runtime-{group.name}"
                )
                proc._watcher.start()
        if proc.state is State.FAILED:
            raise _failure(proc)
        return proc

    def _first_location(self, proc: ServerProcess) -> str:
        # One sandbox folder per server instance (kept across its restarts): a server started for the group
        # while its predecessor still shuts down must not share, nor lose, its socket file.
        proc.instance = f"{proc.group.name}-{next(self._instances)}"
        if self.transport == "unix":
            # The socket lies in the instance's own working folder (0700, the sandbox user's): the runtime
            # can bind it, root (the front door) reaches it, nobody else. Paths stay short (~107 bytes max).
            try:
                folder = self.sandbox.workdir(proc.instance, user=group_user(self.sandbox, proc.group))
            except SandboxError as exc:  # no pool user left, or none could be created: not a fault
                raise ModelLoadError(f"cannot start the runtime server: {exc}") from exc
            return f"grpc+unix://{folder / 'rt.sock'}"
        return f"grpc+tcp://{self.host}:0"

    def _launch_retrying(self, proc: ServerProcess, listen: str) -> None:
        """`_launch`, again after faults with exponential backoff until `retry_for` seconds have passed.
        Raises ModelLoadError at once, RuntimeFault once the time is up or the server is being stopped."""
        deadline = time.monotonic() + self.retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                self._launch(proc, listen)
                return
            except RuntimeFault as fault:
                remaining = deadline - time.monotonic()
                if proc._stopping.is_set() or remaining <= 0:
                    raise
                name = proc.group.name
                log.warning("runtime server %s did not start (%s); retrying in %.1fs", name, fault, delay)
                if proc._stopping.wait(min(delay, remaining)):
                    raise
                delay = min(delay * 2, MAX_RETRY_DELAY)
                with self._lock:
                    proc.restarts += 1

    def _launch(self, proc: ServerProcess, listen: str) -> None:
        """Spawns the runtime server and waits for its READY line. Raises RuntimeFault, or ModelLoadError
        when the sandbox cannot run it at all (a set-up error that retrying does not cure)."""
        self._terminate(proc, grace=0.0)  # what is left of a failed attempt
        cmd = [
            self.interpreter(proc.group),
            "-m",
            "flightline.runtimes.server",
            "--listen",
            listen,
            "--artifacts",
            str(self.artifacts(proc.group).folder),
            EXIT_WITH_STDIN,
            SECRET_STDIN,
        ]
        # Own session = own process group, so a stop reaches whatever the runtime spawned. The stdin pipe
        # stays open (unwritten) for the process's life: its end is the runtime's signal to exit.
        try:
            launch = launch_options(self.sandbox, cmd, proc.instance, proc.group)
            popen = subprocess.Popen(
                launch.args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                **launch.kwargs,
            )
        except SandboxError as exc:
            raise ModelLoadError(f"cannot start the runtime server: {exc}") from exc
        except OSError as exc:
            raise RuntimeFault(f"cannot start the runtime server: {exc}") from exc
        try:
            assert popen.stdin is not None
            popen.stdin.write(proc.secret + "\n")
            popen.stdin.flush()
        except OSError as exc:  # it died at once; the READY wait below says so
            log.warning("runtime server %s: cannot hand over its secret: %s", proc.group.name, exc)
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
            raise RuntimeFault(
                self._reason(proc, f"runtime server did not become ready within {self.start_timeout:g}s")
            ) from None
        if line is None:
            try:
                popen.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                self._terminate(proc, grace=0.0)
            stderr_drain.join(timeout=1.0)
            if popen.returncode == LISTEN_ERROR_EXIT_CODE:
                reason = f"runtime server could not listen on {listen} (taken?)"
                raise RuntimeFault(self._reason(proc, reason))
            raise RuntimeFault(
                self._reason(proc, f"runtime server exited with code {popen.returncode} before it was ready")
            )
        location = line.removeprefix(READY).strip()
        client = runtime_client(location, proc.secret)
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
        except (flight.FlightError, pa.ArrowException, OSError, Unavailable) as error:
            log.warning("load of %s on %s failed: %s", model.key, proc.group.name, error)
            popen = proc._popen
            code = None
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = popen.wait(timeout=1.0)
            if code is not None:
                reason = f"the runtime server exited with code {code} while loading the model"
            else:
                reason = f"runtime server {proc.group.name} did not load the model"
            raise _LoadFault(self._reason(proc, reason)) from None

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
        if proc.instance:
            self.sandbox.release(proc.instance)  # its working folder, socket included

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

    def _set_state(
        self, proc: ServerProcess, state: State, failure: str | None = None, *, by_fault: bool = False
    ) -> bool:
        """Moves `proc` to `state`; False (and no change) once it is STOPPED."""
        with self._changed:
            if proc.state is State.STOPPED:
                return False
            proc.state = state
            if failure is not None:
                proc.failure = failure
                proc.failed_by_fault = by_fault
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
                self.observer.runtime_exited(proc.group.name, proc.group.environment, code)
            else:
                if self._answers_healthcheck(proc):
                    missed = 0
                    continue
                missed += 1
                if missed < self.health_failures:
                    continue
                self.observer.runtime_unhealthy(proc.group.name, proc.group.environment, missed)
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
        """Restarts on the same location, retrying faults (see `_launch_retrying`), and reloads its models;
        returns False once the server failed for good or is being stopped."""
        self._set_state(proc, State.RESTARTING)
        failed: list[tuple[str, str, bool]] = []
        started = False
        with proc._ops:
            if proc._stopping.is_set():
                return False
            with self._lock:
                proc.restarts += 1
            try:
                self._launch_retrying(proc, proc.location)
                started = True
            except (ModelLoadError, RuntimeFault) as exc:
                if proc._stopping.is_set():
                    return False
                by_fault = isinstance(exc, RuntimeFault)
                self.observer.runtime_failed(proc.group.name, proc.group.environment, str(exc))
                with self._lock:
                    failed = [(key, str(exc), by_fault) for key in proc.models]
                    proc.models.clear()
                    if self._servers.get(proc.group) is proc:  # the next load starts afresh
                        del self._servers[proc.group]
                        self._failed[proc.group] = proc
                self._set_state(proc, State.FAILED, failure=str(exc), by_fault=by_fault)
                self._terminate(proc, grace=0.0)
                self.sandbox.release(proc.instance)
            if started:
                with self._lock:
                    models = list(proc.models.values())
                for model in models:
                    try:
                        self._load_on(proc, model)
                    except (ModelLoadError, RuntimeFault) as exc:
                        with self._lock:
                            proc.models.pop(model.key, None)
                        failed.append((model.key, str(exc), isinstance(exc, RuntimeFault)))
                self._set_state(proc, State.HEALTHY)
                group = proc.group
                self.observer.runtime_restarted(group.name, group.environment, proc.pid, proc.restarts)
        for key, reason, by_fault in failed:  # outside every lock: the callback undeploys, which unloads
            log.error("model %s failed for good: %s", key, reason)
            self._report_failure(key, reason, by_fault)
        return started

    def _report_failure(self, key: str, reason: str, by_fault: bool) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(key, reason, by_fault)
        except Exception:  # the watcher goes on either way; the callback's bug must not vanish silently
            log.exception("on_failure callback for %s failed", key)


class _LoadFault(RuntimeFault):
    """The server failed (died, timed out) during a `load`; `load` retries these."""


def _failure(proc: ServerProcess) -> ModelLoadError | RuntimeFault:
    """The error a load on a FAILED server raises: a fault stays a fault (retryable), a load error not."""
    reason = proc.failure or f"runtime server {proc.group.name} failed"
    return RuntimeFault(reason) if proc.failed_by_fault else ModelLoadError(reason)
