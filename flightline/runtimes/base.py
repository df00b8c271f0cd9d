"""The runtime contract: every framework plug-in is a `Runtime` that loads one artifact and runs
inference on Arrow record batches. Nothing else: validation, output envelopes and transport live in
`host.py` and `server.py`, shared by all runtimes."""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import pyarrow as pa

log = logging.getLogger(__name__)


class InvalidInput(pa.ArrowInvalid):  # type: ignore[misc]
    """A request batch breaks the data rules. Flight reports it as INVALID_ARGUMENT."""


class ModelLoadError(Exception):
    """The artifact cannot be loaded by its runtime; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """What a runtime needs to load a model: the artifact and what the upload recorded about it."""

    artifact: Path  # a file, or a directory for archives that were unpacked
    framework: str
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Writes the spec to `folder` (spec.json plus Arrow IPC schema files) for a runtime process."""
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"artifact": str(self.artifact), "framework": self.framework, "options": dict(self.options)}
        (folder / "spec.json").write_text(json.dumps(meta))
        for name, schema in (("input", self.input_schema), ("output", self.output_schema)):
            path = folder / f"{name}_schema.arrow"
            if schema is not None:
                path.write_bytes(schema.serialize().to_pybytes())
            else:
                path.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        meta = json.loads((folder / "spec.json").read_text())

        def schema(name: str) -> pa.Schema | None:
            path = folder / f"{name}_schema.arrow"
            return pa.ipc.read_schema(pa.py_buffer(path.read_bytes())) if path.exists() else None

        return cls(
            Path(meta["artifact"]),
            meta["framework"],
            schema("input"),
            schema("output"),
            meta.get("options", {}),
        )


def artifact_file(artifact: Path, suffix: str, what: str) -> Path:
    """The one `suffix` file a runtime loads: the artifact itself, or the only such file in its folder."""
    if artifact.is_dir():
        found = sorted(artifact.glob(f"*{suffix}"))
        if len(found) != 1:
            raise ModelLoadError(f"expected one {suffix} {what} in {artifact}, found {len(found)}")
        return found[0]
    if not artifact.is_file():
        raise ModelLoadError(f"{what} {artifact} does not exist")
    return artifact


class Runtime(ABC):
    """One loaded model. Implementations are small: load the artifact, map a batch to the library call."""

    name: ClassVar[str]
    input_schema: pa.Schema
    output_schema: pa.Schema
    # The per-request parameters the model takes (MLflow's params schema), one field each; None: none.
    # How clients send them over Flight, and how they are checked: `flightline/runtimes/params.py`.
    params_schema: pa.Schema | None = None
    # Input columns a request may leave out or hold nulls in: per-row arguments (a pipeline's top_k),
    # not tensors. The data rules (rules.BatchRules) fill a missing one with nulls.
    optional_inputs: frozenset[str] = frozenset()

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec) -> Self:
        """Loads the model; raises ModelLoadError with a reason a person can act on."""

    @abstractmethod
    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Runs the model on a batch already checked against `input_schema`. Returns the model's
        outputs only (no envelope), one row per input row."""

    def infer_with_params(self, batch: pa.RecordBatch, params: Mapping[str, Any]) -> pa.RecordBatch:
        """`infer` with per-request parameters: only the ones `params_schema` declares, already cast to
        its types (`params.resolve`), and only when the request sent some. Runtimes that declare a
        `params_schema` override this; the default ignores them, as MLflow does for models without one."""
        return self.infer(batch)

    def warm_up(self) -> None:
        """Runs the model once before it serves, so the first client batch does not pay for lazy
        initialisation (ONNX Runtime's first run, a library's import on first call). The default infers
        one generated row of `input_schema` (zeros, empty strings); a failure is logged, not fatal: a
        model may reject made-up values and still serve real ones. Plug-ins whose inputs need real
        values (tokenizers, string tensors) override this."""
        if not self.input_schema.names:  # an open schema: nothing to generate a row from
            return
        try:
            self.infer(sample_batch(self.input_schema))
        except Exception as error:  # the model's own exception: logged here, never raised
            log.warning(
                "warm-up of %s model failed (it serves anyway): %s: %s",
                self.name,
                type(error).__name__,
                error,
            )


def sample_batch(schema: pa.Schema) -> pa.RecordBatch:
    """One row of `schema`: zeros, False, empty strings and bytes, tensors of zeros; nulls for the rest."""
    return pa.RecordBatch.from_arrays([_one(f.type) for f in schema], schema=schema)


def _one(kind: pa.DataType) -> pa.Array:
    return _values(kind, 1)


def _values(kind: pa.DataType, count: int) -> pa.Array:
    if pa.types.is_fixed_size_list(kind):
        return pa.FixedSizeListArray.from_arrays(
            _values(kind.value_type, count * kind.list_size), kind.list_size
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = pa.array(range(count + 1), pa.int32() if pa.types.is_list(kind) else pa.int64())
        return type(pa.array([], kind)).from_arrays(offsets, _values(kind.value_type, count))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pa.array([0] * count, kind)
    if pa.types.is_boolean(kind):
        return pa.array([False] * count, kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.array([""] * count, kind)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.array([b""] * count, kind)
    return pa.nulls(count, kind)


def cpu_share() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota when one is set
    (a container or a systemd slice limits a runtime server that way). What framework thread pools
    (TensorFlow, torch) are sized from: more threads than cores only adds context switches."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


# One intra-op thread is fastest for small models and leaves the other cores to the transport and to
# concurrent requests; a model with megabytes of weights is dominated by matrix products and gets every
# core of its share (measured with the benchmark's models A and B on ONNX, and on TorchScript: the
# model-A MLP ran 1.5M rows/s on one thread, 30k on two threads of a loaded 2-core machine).
HEAVY_MODEL_BYTES = 1 << 20


def default_intra_op_threads(artifact: Path) -> int:
    """Intra-op threads for a model of this size (a file, or a folder such as a SavedModel)."""
    if artifact.is_dir():
        size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    else:
        size = artifact.stat().st_size if artifact.exists() else 0
    return cpu_share() if size >= HEAVY_MODEL_BYTES else 1


def thread_option(spec: ModelSpec, name: str, default: int) -> int:
    """A thread-count option of the upload (`intra_op_threads`, `inter_op_threads`), else `default`."""
    raw = spec.options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"option {name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= 256:
        raise ModelLoadError(f"option {name} must be between 1 and 256, got {value}")
    return value
