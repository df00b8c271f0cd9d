"""The runtime contract: every framework plug-in is a `Runtime` that loads one artifact and runs
inference on Arrow record batches. Nothing else: validation, output envelopes and transport live in
`host.py` and `server.py`, shared by all runtimes."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import pyarrow as pa


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
