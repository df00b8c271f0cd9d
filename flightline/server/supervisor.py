"""Starts, watches and restarts runtime server processes: one process per deployed model step.

Each process runs `python -m flightline.runtimes.server`, announces itself with one stdout line
(`FLIGHTLINE_READY <location>` or `FLIGHTLINE_LOAD_ERROR <reason>`), and keeps its port across
restarts so the location the front door and clients hold stays valid.

Two kinds of failure to start: a load error of the model itself (the LOAD_ERROR line: starting again gives
the same answer) fails at once with its reason (`ModelLoadError`); a fault of the moment (the port is taken,
the process crashed or said nothing before it was ready, it did not start within the load timeout) is
retried with exponential backoff (`FIRST_RETRY_DELAY` doubling up to `MAX_RETRY_DELAY`) until `retry_for`
seconds have passed since the first try, then fails with the last reason (`RuntimeFault`). A process that
ran and died is restarted the same way; one that crashes soon after each start backs off between restarts.

A runtime must not outlive the control plane nor see its secrets: each one exits at the end of its stdin,
a pipe whose write end this process keeps open (so it closes when this process dies, even by SIGKILL),
and is started by the `Sandbox` (allow-listed environment, limits, its own session and working folder,
an unprivileged user when the server runs as root). Its spec folder and a read-only hand-over of its
artifact lie under `workdir`, which must be traversable by the sandbox user (the App puts it in the
sandbox's root). Without a sandbox argument, one that keeps the server's user is made under `workdir`."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import pyarrow.flight as flight

from flightline.runtimes.base import ModelLoadError, ModelSpec
from flightline.runtimes.server import EXIT_WITH_STDIN, LISTEN_ERROR_EXIT_CODE, LOAD_ERROR, READY
from flightline.server.errors import AlreadyExists, NotFound, Unavailable
from flightline.server.hosting.sandbox import Sandbox, SandboxError, safe_name
from flightline.server.observability import DEFAULT, Observer

STDERR_TAIL_LINES = 20
# A taken port or a crash at start is usually over within seconds; a minute of retries covers a slow
# restart of whatever held the port without hiding a real outage for long.
RETRY_FOR_SECONDS = 60.0
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0

log = logging.getLogger(__name__)


class RuntimeFault(Unavailable):
    """A runtime process could not start for a reason other than its model (port taken, crash or silence
    before it was ready, start-up timeout). Retried by the supervisor; retrying later may help."""


class State(Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class RuntimeProcess:
    """One supervised runtime server. Fields change only under the supervisor's lock."""

    key: str
    runtime: str
    spec_dir: Path
    location: str = ""
    pid: int = 0
    restarts: int = 0
    state: State = State.STARTING
    failure: str | None = None
    failed_by_fault: bool = False  # FAILED by a RuntimeFault (retryable), not by a load error of the model
    _popen: subprocess.Popen[str] | None = field(default=None, repr=False)
    _stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES), repr=False)
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return (urlparse(self.location).port or 0) if self.location else 0

    @property
    def healthy(self) -> bool:
        return self.state is State.HEALTHY


class Supervisor:
    """Owns runtime processes keyed by a caller-chosen key (e.g. `<deployment>/<step>`).

    `on_failure(key, reason)` is called (from a watcher thread, outside the supervisor's lock) when a
    runtime failed for good: it could not be restarted and is left FAILED (`failed_by_fault` says why)."""

    observer: Observer = DEFAULT  # the App sets its own

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        check_interval: float = 0.5,
        health_timeout: float = 5.0,
        health_failures: int = 3,
        retry_for: float = RETRY_FOR_SECONDS,
        stop_grace: float = 5.0,
        on_failure: Callable[[str, str], None] | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.workdir = workdir
        self.sandbox = sandbox or Sandbox(workdir / ".sandbox", user=None)
        self.host = host
        self.python = python
        self.check_interval = check_interval
        self.health_timeout = health_timeout
        # A busy runtime may miss one health deadline; only a run of misses means it is wedged.
        self.health_failures = health_failures
        self.retry_for = retry_for
        self.stop_grace = stop_grace
        self.on_failure = on_failure
        self._procs: dict[str, RuntimeProcess] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    # -- public API -------------------------------------------------------------------------------

    def start(self, key: str, runtime: str, spec: ModelSpec, *, timeout: float = 120) -> RuntimeProcess:
        """Starts a runtime process and returns once it serves. Raises ModelLoadError at once for a load
        error of the model; retries faults for `retry_for` seconds, then raises RuntimeFault."""
        spec_dir = self.workdir / key
        with self._lock:
            if key in self._procs:
                raise AlreadyExists(f"a runtime process for {key!r} is already running")
            proc = RuntimeProcess(key=key, runtime=runtime, spec_dir=spec_dir)
            self._procs[key] = proc
        try:
            spec_dir.mkdir(parents=True, exist_ok=True)
            spec = replace(spec, artifact=self.sandbox.share(spec.artifact, key, into=spec_dir / "artifact"))
            spec.save(spec_dir)
            self.sandbox.readable(spec_dir)
            self._launch_retrying(proc, port=0, timeout=timeout)
        except BaseException:
            with self._lock:
                self._procs.pop(key, None)
            self._kill(proc)
            raise
        self._set_state(proc, State.HEALTHY)
        self.observer.runtime_started(proc.key, proc.runtime, proc.pid)
        proc._watcher = threading.Thread(
            target=self._watch, args=(proc, timeout), daemon=True, name=f"supervise-{key}"
        )
        proc._watcher.start()
        return proc

    def get(self, key: str) -> RuntimeProcess:
        with self._lock:
            try:
                return self._procs[key]
            except KeyError:
                raise NotFound(f"no runtime process {key!r}") from None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._procs)

    def wait_healthy(self, key: str, timeout: float) -> RuntimeProcess:
        """Blocks until the process serves (e.g. after a restart). Raises ModelLoadError or RuntimeFault if
        it failed for good, Unavailable if it is not healthy within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                proc = self._procs.get(key)
                if proc is None:
                    raise NotFound(f"no runtime process {key!r}")
                # A process that just died still reads HEALTHY until its watcher wakes; wait for that.
                if proc.state is State.HEALTHY and proc._popen is not None and proc._popen.poll() is None:
                    return proc
                if proc.state is State.FAILED:
                    failure = proc.failure or "runtime failed"
                    raise RuntimeFault(failure) if proc.failed_by_fault else ModelLoadError(failure)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"runtime {key!r} is not healthy after {timeout:g}s ({proc.state.value})"
                    )
                self._changed.wait(min(remaining, self.check_interval))

    def stop(self, key: str) -> None:
        """Stops a runtime process and removes its spec folder; a key that is not running is a no-op,
        so cleanup can be blind."""
        with self._lock:
            proc = self._procs.pop(key, None)
        if proc is not None:
            self._shutdown([proc])
            shutil.rmtree(proc.spec_dir, ignore_errors=True)
            self.sandbox.release(safe_name(key))

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
            self._procs.clear()
        self._shutdown(procs)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- process lifecycle ------------------------------------------------------------------------

    def _launch_retrying(self, proc: RuntimeProcess, *, port: int, timeout: float) -> None:
        """`_launch`, again after faults with exponential backoff until `retry_for` seconds have passed.
        Raises ModelLoadError at once, RuntimeFault once the time is up or the process is being stopped."""
        deadline = time.monotonic() + self.retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                self._launch(proc, port=port, timeout=timeout)
                return
            except RuntimeFault as fault:
                remaining = deadline - time.monotonic()
                if proc._stopping.is_set() or remaining <= 0:
                    raise
                log.warning("runtime %s did not start (%s); retrying in %.1fs", proc.key, fault, delay)
                if proc._stopping.wait(min(delay, remaining)):
                    raise
                delay = min(delay * 2, MAX_RETRY_DELAY)
                with self._lock:
                    proc.restarts += 1

    def _launch(self, proc: RuntimeProcess, *, port: int, timeout: float) -> None:
        """Spawns the runtime server and waits for its READY line. Raises ModelLoadError for the model's
        load error, RuntimeFault for anything else."""
        cmd = [
            self.python,
            "-m",
            "flightline.runtimes.server",
            "--runtime",
            proc.runtime,
            "--spec",
            str(proc.spec_dir),
            "--host",
            self.host,
            "--port",
            str(port),
            EXIT_WITH_STDIN,
        ]
        # Own session = own process group, so a stop reaches whatever the runtime spawned. The stdin pipe
        # stays open (unwritten) for the process's life: its end is the runtime's signal to exit.
        try:
            launch = self.sandbox.launch(cmd, name=safe_name(proc.key))
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
            raise ModelLoadError(f"cannot start the runtime process: {exc}") from exc
        except OSError as exc:
            raise RuntimeFault(f"cannot start the runtime process: {exc}") from exc
        proc._stderr_tail.clear()
        announcements: queue.Queue[str | None] = queue.Queue()
        stdout_drain = threading.Thread(
            target=self._drain_stdout,
            args=(proc, popen, announcements),
            daemon=True,
            name=f"stdout-{proc.key}",
        )
        stderr_drain = threading.Thread(
            target=self._drain_stderr, args=(proc, popen.stderr), daemon=True, name=f"stderr-{proc.key}"
        )
        stdout_drain.start()
        stderr_drain.start()
        with self._lock:
            proc._popen = popen
            proc.pid = popen.pid
        if proc._stopping.is_set():  # stop() raced with a restart: it may not have seen this process
            self._kill(proc)
            raise RuntimeFault(f"runtime {proc.key!r} was stopped while starting")
        try:
            line = announcements.get(timeout=timeout)
        except queue.Empty:
            self._kill(proc)
            reason = f"runtime did not become ready within {timeout:g}s"
            raise RuntimeFault(self._reason(proc, reason)) from None
        if line is not None and line.startswith(READY):
            location = line.removeprefix(READY).strip()
            with self._lock:
                proc.location = location
            return
        # Load error or exit before READY: wait for the exit so stderr is complete.
        try:
            popen.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:
            self._kill(proc)
        stderr_drain.join(timeout=1.0)
        if line is not None:
            raise ModelLoadError(self._reason(proc, line.removeprefix(LOAD_ERROR).strip()))
        if popen.returncode == LISTEN_ERROR_EXIT_CODE:
            raise RuntimeFault(self._reason(proc, f"runtime could not listen on port {port} (taken?)"))
        reason = f"runtime exited with code {popen.returncode} before it was ready"
        raise RuntimeFault(self._reason(proc, reason))

    def _drain_stdout(
        self, proc: RuntimeProcess, popen: subprocess.Popen[str], announcements: queue.Queue[str | None]
    ) -> None:
        assert popen.stdout is not None
        announced = False
        for line in popen.stdout:
            line = line.rstrip("\n")
            if not announced and line.startswith((READY, LOAD_ERROR)):
                announced = True
                announcements.put(line)
            else:
                log.info("[%s] %s", proc.key, line)
        if not announced:
            announcements.put(None)
        # EOF: the process is gone (or closed stdout); let the watcher look now, not at its next tick.
        proc._wake.set()

    @staticmethod
    def _drain_stderr(proc: RuntimeProcess, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            proc._stderr_tail.append(line)
            log.info("[%s] %s", proc.key, line)

    @staticmethod
    def _reason(proc: RuntimeProcess, reason: str) -> str:
        """`reason`, for callers and clients; the stderr tail (tracebacks, paths) goes to the log only."""
        tail = "\n".join(proc._stderr_tail)
        if tail:
            log.warning("runtime %s: %s\n--- runtime stderr (last lines) ---\n%s", proc.key, reason, tail)
        return reason

    def _kill(self, proc: RuntimeProcess) -> None:
        self._terminate([proc], grace=0.0)

    def _shutdown(self, procs: Iterable[RuntimeProcess]) -> None:
        procs = list(procs)
        for proc in procs:
            proc._stopping.set()
            proc._wake.set()
        self._terminate(procs, grace=self.stop_grace)
        for proc in procs:
            if proc._watcher is not None and proc._watcher is not threading.current_thread():
                proc._watcher.join(timeout=self.stop_grace + 1)
            self._set_state(proc, State.STOPPED)

    @staticmethod
    def _terminate(procs: list[RuntimeProcess], *, grace: float) -> None:
        """SIGTERM every process group, then SIGKILL whatever outlives the grace period."""
        live = [p._popen for p in procs if p._popen is not None and p._popen.poll() is None]
        sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
        for popen in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
        deadline = time.monotonic() + grace
        for popen in live:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        for popen in (p._popen for p in procs if p._popen is not None):
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def _set_state(
        self, proc: RuntimeProcess, state: State, failure: str | None = None, *, by_fault: bool = False
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

    # -- watching ---------------------------------------------------------------------------------

    def _watch(self, proc: RuntimeProcess, load_timeout: float) -> None:
        client: flight.FlightClient | None = None
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
                self.observer.runtime_exited(proc.key, proc.runtime, code)
            else:
                if client is None:
                    client = flight.connect(proc.location)
                if self._answers_healthcheck(client):
                    missed = 0
                    continue
                missed += 1
                if missed < self.health_failures:
                    continue
                self.observer.runtime_unhealthy(proc.key, proc.runtime, missed)
            missed = 0
            if client is not None:
                client.close()
                client = None
            # A process that dies soon after each start backs off; one that ran a while restarts at once.
            crash_delay = min(max(crash_delay * 2, 0.2), 10.0) if time.monotonic() - started_at < 10 else 0.0
            if proc._stopping.wait(crash_delay) or not self._restart(proc, load_timeout):
                break
            started_at = time.monotonic()
        if client is not None:
            client.close()

    def _report_failure(self, key: str, reason: str) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(key, reason)
        except Exception:  # the watcher ends here either way; the callback's bug must not vanish silently
            log.exception("on_failure callback for runtime %s failed", key)

    def _answers_healthcheck(self, client: flight.FlightClient) -> bool:
        options = flight.FlightCallOptions(timeout=self.health_timeout)
        try:
            results = list(client.do_action(flight.Action("healthcheck", b""), options))
        except (flight.FlightError, OSError):
            return False
        return bool(results) and results[0].body.to_pybytes() == b"ok"

    def _restart(self, proc: RuntimeProcess, load_timeout: float) -> bool:
        """Restarts on the same port, retrying faults (see `_launch_retrying`); returns False once the
        process failed for good or is being stopped."""
        self._set_state(proc, State.RESTARTING)
        self._kill(proc)
        with self._lock:
            proc.restarts += 1
        try:
            self._launch_retrying(proc, port=proc.port, timeout=load_timeout)
        except (ModelLoadError, RuntimeFault) as exc:
            if proc._stopping.is_set():
                return False
            self.observer.runtime_failed(proc.key, proc.runtime, str(exc))
            if self._set_state(proc, State.FAILED, failure=str(exc), by_fault=isinstance(exc, RuntimeFault)):
                self._report_failure(proc.key, str(exc))
            return False
        self._set_state(proc, State.HEALTHY)
        self.observer.runtime_restarted(proc.key, proc.runtime, proc.pid, proc.restarts)
        return True
