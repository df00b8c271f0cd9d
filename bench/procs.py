"""Child processes of the bench: each in its own process group, logged, and always stopped."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# The folder of the interpreter running the bench: first on every server's PATH, so tools a server starts
# by name (`mlflow models serve` runs `uvicorn`) come from this environment without activating it.
BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A started server. Its stdout lines are forwarded to its log and can be waited on."""

    def __init__(self, name: str, popen: subprocess.Popen[str], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log = log_path.open("a", buffering=1)
        threading.Thread(target=self._pump, name=f"{name}-stdout", daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._log.write(line)
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """Returns the first stdout line starting with `prefix`; fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.wait()}) before ready; {self.log_tail()}"
                )
            if line.startswith(prefix):
                return line
        raise TimeoutError(f"{self.name} printed no {prefix!r} line in {timeout:.0f} s; {self.log_tail()}")

    def wait_for_http(self, url: str, timeout: float) -> None:
        """Polls `url` until it answers 200 (the server's readiness endpoint)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}) before ready; {self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)  # polling interval of the readiness probe, not a wait for readiness
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout:.0f} s; {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"last lines of {self.log_path}:\n" + "\n".join(text)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server, then SIGKILL to whatever is left of its process group and of the
        processes it started (they may have sessions of their own)."""
        children = descendants(self.popen.pid)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                print(
                    f"warning: {self.name} still running {grace:.0f} s after SIGTERM; killing it", flush=True
                )
        # The group id is the server's pid (start_new_session): this reaches its workers only.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        leftovers = _still_alive(children, within=2.0)
        if leftovers:
            print(
                f"warning: {self.name} left processes {leftovers} running after it stopped; killing them",
                flush=True,
            )
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


def with_first(folder: Path, path: str) -> str:
    return os.pathsep.join([str(folder), *(entry for entry in path.split(os.pathsep) if entry)])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, read from /proc (empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def _still_alive(pids: list[int], within: float) -> list[int]:
    """The processes of `pids` still alive after `within` seconds (a killed group takes a moment to go)."""
    deadline = time.monotonic() + within
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /proc for exits; there is no handle to wait on for non-children
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Processes:
    """Starts servers and stops every one of them on exit, errors and Ctrl-C included."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: list[ServerProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path = REPO_ROOT,
        env: dict[str, str] | None = None,
        bin_dir: Path = BIN_DIR,
    ) -> ServerProcess:
        """Starts `argv` with `bin_dir` (the bench's own environment unless said) first on its PATH."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_path.write_text(f"$ {' '.join(argv)}\n")
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, "PATH": with_first(bin_dir, os.environ.get("PATH", "")), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_path.open("a"),
            text=True,
            start_new_session=True,
        )
        server = ServerProcess(name, popen, log_path)
        self._servers.append(server)
        return server

    def stop(self, server: ServerProcess) -> None:
        if server in self._servers:
            self._servers.remove(server)
            server.stop()

    def stop_all(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def signals_as_interrupt() -> Callable[[], None]:
    """Makes SIGTERM and SIGINT (even if inherited as ignored) unwind like Ctrl-C, so `finally`
    blocks stop the servers; returns the undo."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, action in previous.items():
            signal.signal(sig, action)

    return restore
