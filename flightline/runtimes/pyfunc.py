"""MLflow pyfunc models: a .zip of an MLflow model directory (its `MLmodel` at the top or in its one
top folder), loaded with `mlflow.pyfunc.load_model` and served with its signature as the schemas.

The environment comes from the model itself: its `requirements.txt` (a pin of `mlflow` becomes
`mlflow-skinny` of that version: the slim client loads and predicts every pyfunc model, without the
tracking server's packages) and the Python of its `python_env.yaml` (major.minor), on top of the
"pyfunc" row of FAMILIES (mlflow-skinny and pandas, for models that pin neither). `own_requirements`
reads those files in the control plane; everything that imports mlflow runs in that environment, in
the sandboxed preparation (`describe`) and runtime server (`PyfuncRuntime`).

Inputs are what the signature says: a DataFrame of its columns, one ndarray for a single tensor, a dict
of ndarrays for named tensors (no signature: a DataFrame of whatever columns came). Outputs (DataFrame,
Series, ndarray, list, dict of arrays) become Arrow column by column, without a Python loop per row
except for lists of Python objects."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from flightline.runtimes.archives import read_member, unpacked
from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime
from flightline.runtimes.rules import as_tensor, from_tensor
from flightline.runtimes.signatures import UNNAMED_OUTPUT, Form, Signature, check_declared, params, parse

MLMODEL = "MLmodel"
FLAVOR = "python_function"
_TEXT_LIMIT = 256 << 10  # bytes of requirements.txt / python_env.yaml / MLmodel read at upload
_MAX_REQUIREMENTS = 500
_PYTHON_LINE = re.compile(r"^python:\s*['\"]?(3\.\d{1,3})(?:\.\d{1,3})?['\"]?\s*$", re.MULTILINE)


def own_requirements(archive: Path) -> tuple[tuple[str, ...], str]:
    """(requirements, python major.minor or "") that the MLflow model in `archive` records. Reads text
    only (control plane). ModelLoadError when the archive holds no MLflow model."""
    if read_member(archive, MLMODEL, _TEXT_LIMIT) is None:
        raise ModelLoadError(
            f"the archive has no {MLMODEL} file at its top or in its one top folder: upload an MLflow "
            "model directory (the folder holding MLmodel) as a .zip"
        )
    text = read_member(archive, "requirements.txt", _TEXT_LIMIT) or ""
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    requirements = tuple(_skinny(line) for line in lines if line)
    if len(requirements) > _MAX_REQUIREMENTS:
        raise ModelLoadError(f"requirements.txt lists over {_MAX_REQUIREMENTS} requirements")
    found = _PYTHON_LINE.search(read_member(archive, "python_env.yaml", _TEXT_LIMIT) or "")
    return requirements, found.group(1) if found else ""


def _skinny(line: str) -> str:
    """`mlflow<spec>` as `mlflow-skinny<spec>` (same version; extras keep the full package); anything
    else unchanged (an invalid line is named by the environment builder)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return line
    if canonicalize_name(requirement.name) != "mlflow" or requirement.extras:
        return line
    requirement.name = "mlflow-skinny"
    return str(requirement)


def model_dir(root: Path) -> Path:
    """The folder holding MLmodel: `root` itself or its one sub-folder that has one."""
    if (root / MLMODEL).is_file():
        return root
    found = [child for child in sorted(root.iterdir()) if (child / MLMODEL).is_file()]
    if len(found) != 1:
        raise ModelLoadError(f"expected one {MLMODEL} file at the archive's top, found {len(found)}")
    return found[0]


def _load(folder: Path) -> Any:
    """The pyfunc model of an MLflow model folder; ModelLoadError for a missing flavor or a failed load."""
    try:
        from mlflow.models import Model
        from mlflow.pyfunc import load_model
    except ImportError as error:
        raise ModelLoadError(f"mlflow is not installed in the model's environment: {error}") from None
    try:
        flavors = Model.load(str(folder / MLMODEL)).flavors
    except Exception as error:
        raise ModelLoadError(f"the {MLMODEL} file cannot be read: {type(error).__name__}") from None
    if FLAVOR not in flavors:
        raise ModelLoadError(
            f"the model has no {FLAVOR} flavor (its flavors: {', '.join(sorted(flavors)) or 'none'}), "
            "so MLflow itself cannot load it generically; log it with a pyfunc flavor"
        )
    try:
        return load_model(str(folder))
    except Exception as error:  # the model's own code ran: say what kind of failure, log the rest
        first = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"mlflow.pyfunc.load_model failed: {error!r}", file=sys.stderr)
        raise ModelLoadError(f"mlflow.pyfunc.load_model failed: {type(error).__name__}: {first}") from None


def _signature(model: Any) -> tuple[Signature | None, Signature | None]:
    signature = model.metadata.signature
    if signature is None:
        return None, None
    sides = signature.to_dict()
    return parse(sides.get("inputs"), "inputs"), parse(sides.get("outputs"), "outputs")


def describe(
    path: Path, input_schema: pa.Schema | None = None, output_schema: pa.Schema | None = None
) -> tuple[pa.Schema | None, pa.Schema | None]:
    """Loads the model as its runtime will (in its environment, sandboxed) and returns the schemas its
    signature gives; a declared schema must agree with the signature."""
    with unpacked(path) as root:
        model = _load(model_dir(root))
        inputs, outputs = _signature(model)
    return check_declared("input", input_schema, inputs), check_declared("output", output_schema, outputs)


class PyfuncRuntime(Runtime):
    name = "pyfunc"

    def __init__(self, model: Any, form: Form, input_schema: pa.Schema, output_schema: pa.Schema) -> None:
        self._model = model
        self._form = form
        self.input_schema = input_schema
        self.output_schema = output_schema
        # The per-request parameters the signature declares (MLflow's params schema); None: none.
        signature = model.metadata.signature
        self.params_schema = params(signature.to_dict().get("params")) if signature is not None else None

    @classmethod
    def load(cls, spec: ModelSpec) -> Self:
        with unpacked(spec.artifact) as root:
            model = _load(model_dir(root))
        inputs, outputs = _signature(model)
        form: Form = inputs.form if inputs is not None else "columns"
        input_schema = check_declared("input", spec.input_schema, inputs) or pa.schema([])
        output_schema = check_declared("output", spec.output_schema, outputs) or pa.schema([])
        return cls(model, form, input_schema, output_schema)

    def infer(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return to_batch(self._model.predict(self._inputs(batch)), self.output_schema)

    def infer_with_params(self, batch: pa.RecordBatch, params: Mapping[str, Any]) -> pa.RecordBatch:
        """`infer` with the request's parameters, already checked against `params_schema`: MLflow fills
        the ones not sent with the signature's defaults."""
        result = self._model.predict(self._inputs(batch), params=dict(params))
        return to_batch(result, self.output_schema)

    def _inputs(self, batch: pa.RecordBatch) -> Any:
        if self._form == "tensor":
            return as_tensor(batch.column(0))
        if self._form == "tensors":
            names = batch.schema.names
            return {name: as_tensor(column) for name, column in zip(names, batch.columns, strict=True)}
        return batch.to_pandas()


def to_batch(result: Any, declared: pa.Schema) -> pa.RecordBatch:
    """A predict result as a record batch of `declared` (an empty schema: as it comes). ValueError
    naming what does not fit."""
    import pandas as pd

    names = declared.names
    single = names[0] if len(names) == 1 else UNNAMED_OUTPUT
    if isinstance(result, pa.Table):
        result = result.combine_chunks()
        batch = pa.RecordBatch.from_arrays(list(result.columns), names=result.schema.names)
    elif isinstance(result, pa.RecordBatch):
        batch = result
    elif isinstance(result, pd.DataFrame):
        batch = pa.RecordBatch.from_pandas(result, preserve_index=False)
    elif isinstance(result, pd.Series):
        batch = pa.RecordBatch.from_arrays([pa.Array.from_pandas(result)], names=[str(result.name or single)])
    elif isinstance(result, dict):
        batch = pa.RecordBatch.from_arrays(
            [_column(value) for value in result.values()], names=[str(k) for k in result]
        )
    elif isinstance(result, list) and result and all(isinstance(row, dict) for row in result):
        batch = pa.RecordBatch.from_pylist(result)
    else:
        batch = pa.RecordBatch.from_arrays([_column(result)], names=[single])
    if not names:
        return batch
    if batch.num_columns == 1 and len(names) == 1:
        batch = pa.RecordBatch.from_arrays([batch.column(0)], names=names)
    missing = [name for name in names if name not in batch.schema.names]
    if missing:
        raise ValueError(
            f"predict returned no column '{missing[0]}' of the signature's outputs; it returned "
            f"{batch.schema.names}"
        )
    return batch.select(names).cast(declared)


def _column(value: Any) -> pa.Array:
    """One output column: numeric arrays zero-copy (n-D ones as fixed-size lists), others via Arrow."""
    import pandas as pd

    if isinstance(value, pd.Series):
        return pa.Array.from_pandas(value)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind in "iufb" and array.ndim >= 1:
        return from_tensor(array)
    return pa.array(list(value) if array.ndim > 1 else array)
