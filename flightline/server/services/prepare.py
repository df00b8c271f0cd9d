"""Turns a stored upload into something a runtime can serve: inspect it, convert it to ONNX where the
framework allows, and decide which runtime hosts it. Conversion runs in a subprocess so that unpickling
untrusted files or a crashing converter cannot take the control plane down."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from flightline.runtimes import RUNTIMES
from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import FrameworkSpec
from flightline.runtimes.parent import EXIT_WITH_STDIN
from flightline.server.services.archives import check_zip

ZIPPED_FRAMEWORKS = frozenset({"tensorflow", "custom", "mlflow"})
CONVERT_TIMEOUT = 600  # seconds


@dataclass(frozen=True)
class Prepared:
    runtime: str
    native: bool
    artifact: Path  # what the runtime loads: the original or the converted file
    input_schema: pa.Schema | None
    output_schema: pa.Schema | None
    note: str = ""  # why a convertible model was not converted


def check_artifact(framework: FrameworkSpec, artifact: Path) -> None:
    """Cheap checks done before anything is stored; raises InvalidArgument."""
    if framework.name in ZIPPED_FRAMEWORKS or artifact.suffix == ".zip":
        check_zip(artifact)


def prepare(
    framework: FrameworkSpec,
    artifact: Path,
    work: Path,
    *,
    input_schema: pa.Schema | None,
    output_schema: pa.Schema | None,
    options: dict[str, str],
    converters: Converters | None = None,
) -> Prepared:
    """Raises ModelLoadError when the artifact cannot be served, with the reason. `converters`
    tracks the converter process while it runs, so that a stopping server can end it."""
    if framework.converts_to_onnx:
        converted, note = _convert(
            framework.name, artifact, work, input_schema, output_schema, options, converters or Converters()
        )
        if converted is not None:
            return _onnx(converted, input_schema, output_schema)
        runtime = framework.fallback_runtime
        if runtime is None or runtime not in RUNTIMES:
            raise ModelLoadError(f"{note}; no containerized runtime for {framework.name!r} is available yet")
        return Prepared(runtime, False, artifact, input_schema, output_schema, note)
    if framework.name == "onnx":
        return _onnx(artifact, input_schema, output_schema)
    if framework.name == "python":
        _check_python_step(artifact)
        return Prepared("python", True, artifact, input_schema, output_schema)
    runtime = framework.fallback_runtime or framework.runtime
    if runtime not in RUNTIMES:
        raise ModelLoadError(
            f"framework {framework.name!r} is in the catalog, but its {runtime!r} runtime is not built yet"
        )
    return Prepared(runtime, framework.native, artifact, input_schema, output_schema)


def _onnx(path: Path, input_schema: pa.Schema | None, output_schema: pa.Schema | None) -> Prepared:
    from flightline.runtimes.onnx import describe

    served_in, served_out = describe(path, input_schema, output_schema)
    return Prepared("onnx", True, path, served_in, served_out)


def _check_python_step(path: Path) -> None:
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except (SyntaxError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} is not a valid Python script: {exc}") from exc
    if not any(isinstance(n, ast.FunctionDef) and n.name == "wallaroo_json" for n in tree.body):
        raise ModelLoadError(f"{path.name} defines no top-level `wallaroo_json(data)` function")


def _convert(
    framework: str,
    artifact: Path,
    work: Path,
    input_schema: pa.Schema | None,
    output_schema: pa.Schema | None,
    options: dict[str, str],
    converters: Converters,
) -> tuple[Path | None, str]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        args = [
            sys.executable,
            "-m",
            "flightline.runtimes.convert",
            "--framework",
            framework,
            "--artifact",
            str(artifact),
            "--out",
            str(work),
            "--options",
            json.dumps(options),
            EXIT_WITH_STDIN,
        ]
        for flag, schema in (("--input-schema", input_schema), ("--output-schema", output_schema)):
            if schema is not None:
                file = Path(tmp) / f"{flag.strip('-')}.arrow"
                file.write_bytes(schema.serialize().to_pybytes())
                args += [flag, str(file)]
        stdout, stderr = _run_converter(args, Path(tmp), framework, converters)
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = stderr.strip().splitlines()[-3:]
        raise ModelLoadError(f"conversion of {framework} model crashed: {' | '.join(tail)}") from None
    if "error" in result:
        raise ModelLoadError(result["error"])
    if not result["onnx_path"]:
        return None, result["note"]
    converted = Path(result["onnx_path"]).resolve()
    if not converted.is_relative_to(work.resolve()):  # the subprocess ran the user's pickle: trust nothing
        raise ModelLoadError(f"the converter wrote outside its work folder: {converted}")
    return converted, result["note"]


class Converters:
    """The converter processes running now; kill_all() ends them (a server stopping does not wait
    minutes for a conversion: the version is marked interrupted at the next start)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self._closed = False

    def add(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.add(proc)
            closed = self._closed
        if closed:  # started while kill_all() ran
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.discard(proc)

    def kill_all(self) -> None:
        """Ends the running converters, and any started from now on."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _run_converter(args: list[str], tmp: Path, framework: str, converters: Converters) -> tuple[str, str]:
    """Runs the converter and returns its (stdout, stderr). It dies with this process: it holds the
    read end of a pipe only we write to (never), and exits at its end (`--exit-with-stdin`), so a
    SIGKILLed server leaves no converter behind. Its own session lets a timeout kill what it spawned.
    Output goes to files, not pipes, so a chatty converter cannot block on a full pipe."""
    out_path, err_path = tmp / "stdout", tmp / "stderr"
    with out_path.open("w+") as out, err_path.open("w+") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True, start_new_session=True
        )
        converters.add(proc)
        try:
            proc.wait(timeout=CONVERT_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise ModelLoadError(f"conversion of {framework} model took over {CONVERT_TIMEOUT} s") from None
        finally:
            converters.discard(proc)
            _kill_group(proc)  # interrupted some other way: do not leave it running
            proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
    return out_path.read_text(), err_path.read_text()
