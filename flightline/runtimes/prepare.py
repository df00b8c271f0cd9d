"""Preparation of an upload, for any plug-in: convert it where its plug-in has a converter, then derive
the schemas its runtime will serve (`describe`) and validate it. Loading a model can run arbitrary code
(pickles) or allocate without bound (an ONNX graph that builds a huge tensor), so this runs only as a
subprocess of the control plane, under memory and time limits:

    python -m flightline.runtimes.prepare --framework F --artifact IN --out OUTDIR
        [--input-schema FILE] [--output-schema FILE] [--options JSON] [--memory-limit BYTES]

Schema files hold Arrow IPC serialized schemas. On success the process writes
`OUTDIR/input_schema.arrow` and `OUTDIR/output_schema.arrow` (each only when there is a schema) and
prints one JSON line `{"runtime": <plug-in name>, "artifact": <path relative to OUTDIR, or "" for the
original>, "note": <which conversion route won and why others did not, or why it was not converted>}`;
on failure it prints `{"error": <reason>}`. Exit codes: 0 done, 2 bad request, 3 the model cannot be served.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.catalog import get_framework
from flightline.runtimes.parent import EXIT_WITH_STDIN, on_end_of_stdin
from flightline.runtimes.plugins import CONVERTED_FRAMEWORK, Plugin, for_framework, load_attribute

INPUT_SCHEMA_FILE = "input_schema.arrow"
OUTPUT_SCHEMA_FILE = "output_schema.arrow"
EXIT_INVALID_ARGUMENT = 2
EXIT_LOAD_ERROR = 3
EXIT_PARENT_GONE = 4  # the control plane closed our stdin or died


class InvalidPrepareRequest(ValueError):
    """The request itself is malformed (bad JSON options, unreadable schema file)."""


@dataclass(frozen=True)
class Preparation:
    runtime: str  # the plug-in that serves the result
    artifact: Path | None  # the converted (or re-exported) file; None: the original is served
    input_schema: pa.Schema | None
    output_schema: pa.Schema | None
    note: str = ""


def prepare(
    framework: str,
    artifact: Path,
    out_dir: Path,
    *,
    input_schema: pa.Schema | None = None,
    output_schema: pa.Schema | None = None,
    options: Mapping[str, str] | None = None,
) -> Preparation:
    """Raises UnknownFramework, ModelLoadError and the converter's ValueErrors (bad schemas/options)."""
    get_framework(framework)  # UnknownFramework names the valid ones
    accepting = for_framework(framework)
    note = ""
    served = artifact
    if accepting.converter is not None and accepting.converts(framework):
        convert = load_attribute(accepting.converter)
        result = convert(
            framework,
            artifact,
            out_dir,
            input_schema=input_schema,
            output_schema=output_schema,
            options=dict(options or {}),
        )
        if result.onnx_path is not None:
            target = for_framework(CONVERTED_FRAMEWORK)
            served_in, served_out = _describe(target, result.onnx_path, input_schema, output_schema)
            return Preparation(target.name, Path(result.onnx_path), served_in, served_out, result.note)
        note = result.note
        served = result.served_path or artifact
    served_in, served_out = _describe(accepting, served, input_schema, output_schema)
    return Preparation(accepting.name, None if served is artifact else served, served_in, served_out, note)


def _describe(
    serving: Plugin, path: Path, input_schema: pa.Schema | None, output_schema: pa.Schema | None
) -> tuple[pa.Schema | None, pa.Schema | None]:
    if serving.describe is None:
        return input_schema, output_schema
    describe: Callable[..., tuple[pa.Schema | None, pa.Schema | None]] = load_attribute(serving.describe)
    return describe(path, input_schema, output_schema)


def _read_schema(path: str | None) -> pa.Schema | None:
    if path is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(Path(path).read_bytes()))
    except (OSError, pa.ArrowException) as exc:
        raise InvalidPrepareRequest(f"cannot read the Arrow IPC schema in {path}: {exc}") from exc


def _write_schemas(out_dir: Path, preparation: Preparation) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in (
        (INPUT_SCHEMA_FILE, preparation.input_schema),
        (OUTPUT_SCHEMA_FILE, preparation.output_schema),
    ):
        if schema is not None:
            (out_dir / name).write_bytes(schema.serialize().to_pybytes())


def _relative(out_dir: Path, artifact: Path | None) -> str:
    return "" if artifact is None else str(artifact.resolve().relative_to(out_dir.resolve()))


def _limit_memory(limit: int) -> None:
    """Caps the address space (soft and hard: the model's code cannot raise it again); no core dumps."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m flightline.runtimes.prepare", description=__doc__)
    parser.add_argument("--framework", required=True)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--input-schema", help="file with an Arrow IPC serialized schema")
    parser.add_argument("--output-schema", help="file with an Arrow IPC serialized schema")
    parser.add_argument("--options", default="{}", help='JSON object of strings, e.g. {"target_opset": "17"}')
    parser.add_argument(
        "--memory-limit", type=int, help="address-space limit in bytes, set before anything loads"
    )
    parser.add_argument(
        EXIT_WITH_STDIN,
        action="store_true",
        help="exit at once at the end of stdin, i.e. when the parent holding its pipe closes it or dies",
    )
    args = parser.parse_args(argv)
    if args.exit_with_stdin:  # before unpickling anything: a user's pickle may hang or spin forever
        on_end_of_stdin(lambda: os._exit(EXIT_PARENT_GONE))
    if args.memory_limit:
        _limit_memory(args.memory_limit)
    reply: dict[str, Any]
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise InvalidPrepareRequest("--options must be a JSON object")
        preparation = prepare(
            args.framework,
            args.artifact,
            args.out,
            input_schema=_read_schema(args.input_schema),
            output_schema=_read_schema(args.output_schema),
            options={str(key): str(value) for key, value in options.items()},
        )
        _write_schemas(args.out, preparation)
        reply = {
            "runtime": preparation.runtime,
            "artifact": _relative(args.out, preparation.artifact),
            "note": preparation.note,
            "prefix": sys.prefix,  # which environment inspected it (for the server's log and tests)
        }
    except ModelLoadError as exc:
        emit(json.dumps({"error": str(exc)}))
        return EXIT_LOAD_ERROR
    except MemoryError:  # the memory limit the control plane set; numpy and Python raise this
        emit(json.dumps({"error": "loading the model ran out of memory (the preparation limit)"}))
        return EXIT_LOAD_ERROR
    except ValueError as exc:  # UnknownFramework, the converter's bad schemas or options, bad JSON
        emit(json.dumps({"error": str(exc)}))
        return EXIT_INVALID_ARGUMENT
    emit(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
