"""Turns a stored upload into something a runtime can serve: inspect it, convert it to ONNX where the
framework allows, and decide which runtime hosts it. Conversion runs in a subprocess so that unpickling
untrusted files or a crashing converter cannot take the control plane down."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from flightline.runtimes import RUNTIMES
from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import FrameworkSpec
from flightline.server.hosting.sandbox import Limits, Sandbox, take_back
from flightline.server.services.archives import check_zip

ZIPPED_FRAMEWORKS = frozenset({"tensorflow", "custom", "mlflow"})
CONVERT_TIMEOUT = 600  # seconds
CONVERT_LIMITS = Limits(cpu_seconds=CONVERT_TIMEOUT)


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
) -> Prepared:
    """Raises ModelLoadError when the artifact cannot be served, with the reason."""
    if framework.converts_to_onnx:
        converted, note = _convert(framework.name, artifact, work, input_schema, output_schema, options)
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
) -> tuple[Path | None, str]:
    # The converter unpickles user files: it runs sandboxed (hosting/sandbox.py), reads read-only
    # hand-overs of the artifact and schemas, writes only into its own folder, and the server copies the
    # regular files it wrote there back into `work`.
    with tempfile.TemporaryDirectory(dir=work) as tmp, Sandbox.temporary() as sandbox:
        out = sandbox.workdir("convert-out")  # apart from its HOME, where libraries may leave caches
        args = [
            sys.executable,
            "-m",
            "flightline.runtimes.convert",
            "--framework",
            framework,
            "--artifact",
            str(sandbox.share(artifact, "artifact")),
            "--out",
            str(out),
            "--options",
            json.dumps(options),
        ]
        for flag, schema in (("--input-schema", input_schema), ("--output-schema", output_schema)):
            if schema is not None:
                file = Path(tmp) / f"{flag.strip('-')}.arrow"
                file.write_bytes(schema.serialize().to_pybytes())
                args += [flag, str(sandbox.share(file, "schema"))]
        try:
            launch = sandbox.launch(args, name="convert", limits=CONVERT_LIMITS)
            kwargs = {**launch.kwargs, "capture_output": True, "text": True, "check": False}
            proc = subprocess.run(launch.args, timeout=CONVERT_TIMEOUT, **kwargs)
        except subprocess.TimeoutExpired:
            raise ModelLoadError(f"conversion of {framework} model took over {CONVERT_TIMEOUT} s") from None
        take_back(out, work)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = proc.stderr.strip().splitlines()[-3:]
        raise ModelLoadError(f"conversion of {framework} model crashed: {' | '.join(tail)}") from None
    if "error" in result:
        raise ModelLoadError(result["error"])
    if not result["onnx_path"]:
        return None, result["note"]
    written = Path(result["onnx_path"])
    converted = (work / written.relative_to(out)).resolve() if written.is_relative_to(out) else written
    if not converted.is_relative_to(work.resolve()) or not converted.is_file():  # it ran user code
        raise ModelLoadError(f"the converter wrote outside its work folder: {converted}")
    return converted, result["note"]
