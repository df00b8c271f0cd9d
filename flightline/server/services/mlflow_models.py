"""An MLflow model directory uploaded as one unit: read its MLmodel, route it by flavor, check the
user's schema against its signature, and decide what is stored and what is prepared.

What is stored: the whole directory as a deterministic zip with MLmodel at its root (the version's
`original_sha256`, an immutable copy of exactly the registry version that was resolved), and, for a
flavor served by one of our runtimes, the flavor's own file or folder (the version's `sha256`, what
preparation converts or the runtime loads). The pyfunc framework is served from the directory zip
itself, in an environment its plug-in reads from the zip's requirements. The flavor knowledge is
`flightline/runtimes/mlflow_model.py`'s; this module only applies it.
MLmodel is parsed as data (bounded YAML), never loaded as a model: that happens in preparation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from flightline.runtimes import mlflow_model
from flightline.runtimes.catalog import FRAMEWORKS
from flightline.runtimes.rules import check_schema
from flightline.server.errors import InvalidArgument
from flightline.server.registries.mlflow import ModelReference
from flightline.server.services.archives import zip_dir
from flightline.server.services.names import parse_schema
from flightline.server.store.records import Conversion, MlflowOrigin

PYFUNC_ARCHIVE = "mlflow-model.zip"


@dataclass(frozen=True)
class MlflowUnit:
    conversion: Conversion  # as recorded: the routed framework, the served schemas, the model's env
    original: Path  # the whole directory, zipped
    served: Path  # what preparation starts from (the original itself for pyfunc)
    origin: MlflowOrigin


def mlflow_unit(
    folder: Path, conversion: Conversion, work: Path, asked: str, reference: ModelReference | None
) -> MlflowUnit:
    """Raises InvalidArgument naming the field for a model that cannot be served as asked."""
    try:
        model = mlflow_model.read(folder)
        route = mlflow_model.route(model, conversion.framework, [f.name for f in FRAMEWORKS])
        signature = mlflow_model.input_schema(model)
        signature_out = mlflow_model.output_schema(model)
    except ValueError as exc:  # NotAnMlflowModel, or the framework does not fit the flavors
        raise InvalidArgument(str(exc)) from exc
    given = parse_schema("conversion.input_schema", conversion.input_schema)
    if given is not None and signature is not None:
        try:
            mlflow_model.check_given(given, signature)
        except mlflow_model.SignatureMismatch as exc:
            raise InvalidArgument(str(exc)) from exc
    served_in = given if given is not None else signature
    if served_in is not None and given is None:
        try:
            check_schema("the model's signature", served_in)
        except ValueError as exc:
            raise InvalidArgument(f"the model's signature cannot be served: {exc}") from exc
    given_out = parse_schema("conversion.output_schema", conversion.output_schema)
    served_out = given_out if given_out is not None else signature_out
    # A pyfunc model's own requirements (requirements.txt, python_env.yaml) are read from the stored zip
    # by its plug-in (`Plugin.own_requirements`) when it is prepared, as for any pyfunc zip.
    recorded = dataclasses.replace(
        conversion,
        framework=route.framework,
        input_schema=_ipc(served_in),
        output_schema=_ipc(served_out),
    )
    original = zip_dir(folder, work / PYFUNC_ARCHIVE)
    served = original if not route.artifact else _flavor_file(folder, route, work)
    origin = MlflowOrigin(
        uri=asked,
        name=reference.name if reference else "",
        version=reference.version if reference else "",
        alias=reference.alias if reference else "",
        model_id=(reference.model_id if reference else "") or model.model_id,
        run_id=model.run_id,
        mlflow_version=model.mlflow_version,
        flavors=model.flavor_names,
        flavor=route.flavor,
        serialization=route.serialization,
        signature=_signature_kind(model),
        route=route.reason,
    )
    return MlflowUnit(recorded, original, served, origin)


def _flavor_file(folder: Path, route: mlflow_model.Route, work: Path) -> Path:
    path = folder / route.artifact
    if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()) or not path.exists():
        raise InvalidArgument(
            f"the model's MLmodel names {route.artifact!r} for flavor {route.flavor}, which is not in the "
            "model directory"
        )
    if path.is_dir():  # e.g. a SavedModel folder: its framework takes it as a zip
        return zip_dir(path, work / f"{path.name}.zip")
    return path


def _signature_kind(model: mlflow_model.MlflowModel) -> str:
    if not model.signature.get("inputs"):
        return ""
    return "columns" if mlflow_model.is_column_signature(model) else "tensors"


def _ipc(schema: pa.Schema | None) -> bytes:
    return schema.serialize().to_pybytes() if schema is not None else b""
