"""Turns a stored upload into something a runtime can serve: inspect it, convert it to ONNX where its
plug-in allows, and decide which runtime hosts it. The control plane never loads a model: all of that
runs in the subprocess `python -m flightline.runtimes.prepare` under memory and time limits, so that
unpickling untrusted files, a crashing converter or an ONNX graph that allocates without bound cannot
take the control plane down. Only its one-line JSON reply and the schema files it wrote are read back,
and they are not trusted (the subprocess may have run the user's code)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import FrameworkSpec
from flightline.runtimes.parent import EXIT_WITH_STDIN
from flightline.runtimes.plugins import for_framework, plugin
from flightline.runtimes.prepare import INPUT_SCHEMA_FILE, OUTPUT_SCHEMA_FILE
from flightline.server.hosting.sandbox import Limits, Sandbox, take_back
from flightline.server.services.archives import check_zip

log = logging.getLogger(__name__)

PREPARE_TIMEOUT = 600  # seconds
# Address space (RLIMIT_AS, virtual memory) of the preparation process. Converting an XGBoost pickle
# peaks at 2.0 GiB of address space on 2 cores while using 0.3 GiB resident (measured 2026-12-01): most
# of it is reserved, not used, by per-thread stacks and malloc arenas, which grow with the core count.
# A model that needs more than this to be inspected is refused rather than allowed to exhaust the host.
PREPARE_MEMORY_LIMIT = (4 << 30) + (os.cpu_count() or 1) * (128 << 20)  # bytes
_MAX_SCHEMA_BYTES = 16 << 20


@dataclass(frozen=True)
class Prepared:
    runtime: str
    native: bool
    artifact: Path  # what the runtime loads: the original or the converted file
    input_schema: pa.Schema | None
    output_schema: pa.Schema | None
    note: str = ""  # why a convertible model was not converted
    prefix: str = ""  # the environment (sys.prefix) the preparation process said it ran in


def check_artifact(framework: FrameworkSpec, artifact: Path) -> None:
    """Cheap checks done before anything is stored; raises InvalidArgument. Any zip is checked (forms are
    told apart by content: a Keras upload may be a SavedModel zip, a .keras zip or an HDF5 file)."""
    if framework.archive_only or artifact.suffix == ".zip" or zipfile.is_zipfile(artifact):
        check_zip(artifact)


def prepare(
    framework: FrameworkSpec,
    artifact: Path,
    work: Path,
    *,
    input_schema: pa.Schema | None,
    output_schema: pa.Schema | None,
    options: dict[str, str],
    memory_limit: int = PREPARE_MEMORY_LIMIT,
    timeout: float = PREPARE_TIMEOUT,
    converters: Converters | None = None,
    python: str = sys.executable,
) -> Prepared:
    """Raises ModelLoadError when the artifact cannot be served, with the reason. `converters`
    tracks the preparation process while it runs, so that a stopping server can end it. `python` is the
    interpreter of the model's environment, so inspection sees the packages the model will run with."""
    for_framework(framework.name)  # no process to start for a framework no plug-in serves
    out = Path(tempfile.mkdtemp(dir=work, prefix="prepared-"))
    # The subprocess may unpickle user files: it runs sandboxed (hosting/sandbox.py), reads read-only
    # hand-overs of the artifact and schemas, writes only into its own folder, and the server copies the
    # regular files it wrote there back into `out`.
    with tempfile.TemporaryDirectory(dir=work) as tmp, Sandbox.temporary() as sandbox:
        written = sandbox.workdir("prepare-out")
        args = [
            python,
            "-m",
            "flightline.runtimes.prepare",
            "--framework",
            framework.name,
            "--artifact",
            str(sandbox.share(artifact, "artifact")),
            "--out",
            str(written),
            "--options",
            json.dumps(options),
            EXIT_WITH_STDIN,
        ]
        for flag, schema in (("--input-schema", input_schema), ("--output-schema", output_schema)):
            if schema is not None:
                file = Path(tmp) / f"{flag.strip('-')}.arrow"
                file.write_bytes(schema.serialize().to_pybytes())
                args += [flag, str(sandbox.share(file, "schema"))]
        try:
            proc = run_preparation(
                sandbox,
                args,
                memory_limit=memory_limit,
                timeout=timeout,
                logs=Path(tmp),
                converters=converters or Converters(),
            )
        except subprocess.TimeoutExpired:
            raise ModelLoadError(f"preparing the {framework.name} model took over {timeout:g} s") from None
        take_back(written, out)
    reply = _reply(framework.name, proc)
    runtime = plugin(str(reply.get("runtime", "")))  # ModelLoadError for a name no plug-in has
    served = artifact if not reply.get("artifact") else _inside(out, str(reply["artifact"]))
    return Prepared(
        runtime.name,
        runtime.native,
        served,
        _schema(out / INPUT_SCHEMA_FILE),
        _schema(out / OUTPUT_SCHEMA_FILE),
        str(reply.get("note", "")),
        str(reply.get("prefix", ""))[:4096],
    )


def run_preparation(
    sandbox: Sandbox,
    args: list[str],
    *,
    memory_limit: int,
    timeout: float,
    logs: Path,
    converters: Converters,
) -> subprocess.CompletedProcess[str]:
    """Runs the preparation subprocess in `sandbox`, the one place it is started: an allow-listed
    environment, the sandbox user when the server is root, CPU and address-space limits.

    The limits are set by the sandbox's launcher before the program starts, never by a `preexec_fn`
    (Python between fork and exec in this multi-threaded gRPC server crashes the child); the program
    also caps its own address space (`--memory-limit`) when run by hand. Its output goes to files in
    `logs`, of which only the tails are read: a pickle printing gigabytes must not grow the control
    plane's memory.

    It dies with this process: it holds the read end of a pipe only we write to (never), and exits at
    its end (`--exit-with-stdin`), so a SIGKILLed server leaves no preparation behind. Its own session
    lets a timeout kill whatever it spawned."""
    with (logs / "stdout").open("w+b") as stdout, (logs / "stderr").open("w+b") as stderr:
        limits = Limits(memory_bytes=memory_limit, cpu_seconds=int(timeout))
        argv = [*args, "--memory-limit", str(memory_limit), EXIT_WITH_STDIN]
        launch = sandbox.launch(argv, name="prepare", limits=limits)
        proc = subprocess.Popen(
            launch.args, **launch.kwargs, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr
        )
        converters.add(proc)
        try:
            proc.wait(timeout=timeout)
        finally:  # done, timed out, or interrupted some other way: leave nothing running
            converters.discard(proc)
            _kill_group(proc)
            proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
        return subprocess.CompletedProcess(proc.args, proc.returncode, _tail(stdout), _tail(stderr))


def _tail(file: BinaryIO, size: int = 64 << 10) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read().decode("utf-8", errors="replace")


def _reply(framework: str, proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
        if not isinstance(reply, dict):
            raise ValueError("not a JSON object")
    except (IndexError, ValueError):
        # The detail (a traceback, paths) goes to the log, not to the client.
        log.warning(
            "preparing a %s model failed, exit code %s: %s",
            framework,
            proc.returncode,
            " | ".join(proc.stderr.strip().splitlines()[-5:]),
        )
        why = "ran out of memory or crashed" if proc.returncode != 0 else "gave no answer"
        raise ModelLoadError(
            f"preparing the {framework} model failed: the preparation process {why}"
        ) from None
    if "error" in reply:
        raise ModelLoadError(str(reply["error"]))
    return reply


def _inside(out: Path, relative: str) -> Path:
    """The converted file, which must be inside OUTDIR: the subprocess ran the user's pickle."""
    path = (out / relative).resolve()
    if not path.is_relative_to(out.resolve()) or not path.is_file():
        raise ModelLoadError("the preparation process named a converted file outside its folder")
    return path


def _schema(path: Path) -> pa.Schema | None:
    if path.is_symlink():
        raise ModelLoadError("the preparation process wrote a link instead of a schema")
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_SCHEMA_BYTES:
        raise ModelLoadError("the preparation process wrote an oversized schema")
    try:
        return pa.ipc.read_schema(pa.py_buffer(path.read_bytes()))
    except pa.ArrowException:
        raise ModelLoadError("the preparation process wrote an unreadable schema") from None


class Converters:
    """The converter processes running now; kill_all() ends them (a server stopping does not wait
    minutes for a conversion: the version is marked interrupted at the next start)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.add(proc)
            closed = self._closed
        if closed:  # started while kill_all() ran
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        """Ends the running converters, and any started from now on."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
