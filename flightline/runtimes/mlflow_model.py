"""What Flightline knows about MLflow model directories, in one place: reading `MLmodel`, which flavor is
served by which catalog framework and from which file, and Arrow schemas from MLflow signatures.

An MLflow model directory holds `MLmodel` (YAML: the flavors, the signature, the environment files) and
the files of each flavor. It is read as data only (`yaml.safe_load` of a bounded file, paths checked to
stay inside the directory): nothing here imports MLflow or loads a model, so the control plane uses it
at upload to decide how a model is served, and a plug-in (e.g. pyfunc) may use it inside its runtime.

Routing (`route`), first match wins:
- `onnx` -> framework `onnx`, the flavor's `.onnx` file;
- `sklearn` and `xgboost` with a string (or other non-numeric) column in their signature -> `mlflow`
  (the pyfunc runtime, below);
- `sklearn` (pickle, cloudpickle or skops) -> `sklearn`, the flavor's model file (converted to ONNX with
  verification, else served by the sklearn runtime; skops files load with an explicit trusted-type list);
- `xgboost` (ubj, json, deprecated binary) -> `xgboost`, the booster file (converted with onnxmltools,
  else served by the native `xgboost` runtime);
- `tensorflow`, `keras`, `pytorch` -> the frameworks of the same name; `transformers` ->
  `hugging-face-<task>`: the whole directory as a zip with MLmodel at its root (the flavor's files are
  where MLmodel says), for those frameworks' plug-ins;
- anything else with `python_function` -> `mlflow` (the pyfunc runtime), the whole directory as a zip with
  `MLmodel` at its root, in an environment built from the model's own requirements (read by the pyfunc
  plug-in).
A caller may ask for `mlflow` explicitly to serve any pyfunc model through MLflow itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pyarrow as pa

from flightline.runtimes import signatures
from flightline.runtimes.base import ModelLoadError

MLMODEL: Final = "MLmodel"
PYFUNC_FRAMEWORK: Final = "mlflow"  # the catalog framework served by the pyfunc runtime
MAX_MLMODEL_BYTES: Final = 1 << 20
# Flavors served by a framework of the catalog, checked in this order.
_FLAVOR_FRAMEWORKS: Final = (
    ("onnx", "onnx"),
    ("sklearn", "sklearn"),
    ("xgboost", "xgboost"),
    ("tensorflow", "tensorflow"),
    ("keras", "keras"),
    ("pytorch", "pytorch"),
    ("transformers", "hugging-face-"),  # + the flavor's task
)

# Flavors whose runtimes (and their ONNX conversions) take numeric features only: a column signature with
# a column of another type (a category as text, a date) is served by MLflow's pyfunc, which gets the
# DataFrame as it is.
_NUMERIC_ONLY: Final = frozenset({"sklearn", "xgboost"})


class NotAnMlflowModel(ValueError):
    """The MLmodel file is missing, unreadable or names files outside the model directory."""


class SignatureMismatch(ValueError):
    """A schema given by the user does not fit the model's signature; the message names the field."""


@dataclass(frozen=True)
class MlflowModel:
    """An `MLmodel` file as data."""

    flavors: Mapping[str, Mapping[str, Any]]
    signature: Mapping[str, Any]  # {"inputs": [...], "outputs": [...], "params": [...]}, parsed
    mlflow_version: str
    model_id: str
    run_id: str

    @property
    def flavor_names(self) -> tuple[str, ...]:
        return tuple(self.flavors)


@dataclass(frozen=True)
class Route:
    """How one MLflow model is served: the catalog framework, the flavor it is served from, and the
    file or folder of the model directory the framework's plug-in is given ("" = the whole directory,
    as a zip with MLmodel at its root)."""

    framework: str
    flavor: str
    artifact: str
    serialization: str  # e.g. "skops", "cloudpickle", "ubj"; "" when the flavor has one form
    reason: str  # why this runtime family: shown on the version
    own_environment: bool = False  # served by MLflow itself, in an env from the model's requirements


def read(folder: Path) -> MlflowModel:
    """The MLmodel of a model directory; NotAnMlflowModel when there is none or it is not valid YAML."""
    path = folder / MLMODEL
    if not path.is_file() or path.is_symlink():
        raise NotAnMlflowModel(f"no {MLMODEL} file at the root of the model directory")
    if path.stat().st_size > MAX_MLMODEL_BYTES:
        raise NotAnMlflowModel(f"{MLMODEL} is larger than {MAX_MLMODEL_BYTES} bytes")
    return parse(path.read_text(errors="replace"))


def parse(text: str) -> MlflowModel:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise NotAnMlflowModel(f"{MLMODEL} is not valid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict) or not data["flavors"]:
        raise NotAnMlflowModel(f"{MLMODEL} lists no flavors")
    flavors = {str(k): v if isinstance(v, dict) else {} for k, v in data["flavors"].items()}
    signature: dict[str, Any] = {}
    raw = data.get("signature")
    if isinstance(raw, dict):
        for part in ("inputs", "outputs", "params"):
            value = raw.get(part)
            if isinstance(value, str) and value:
                try:
                    signature[part] = json.loads(value)
                except ValueError:
                    raise NotAnMlflowModel(f"{MLMODEL} signature {part} is not JSON") from None
    return MlflowModel(
        flavors,
        signature,
        str(data.get("mlflow_version") or ""),
        str(data.get("model_id") or ""),
        str(data.get("run_id") or ""),
    )


def route(model: MlflowModel, requested: str = "", known: Sequence[str] = ()) -> Route:
    """The route of `model`; `requested` is the caller's framework ("" = by flavor), `known` the catalog's
    framework names. ValueError naming `conversion.framework` when the request does not fit the model."""
    pyfunc = model.flavors.get("python_function")
    if requested == PYFUNC_FRAMEWORK:
        if pyfunc is None:
            raise ValueError(
                f"conversion.framework 'mlflow' needs a python_function flavor; the model has "
                f"{list(model.flavors)}"
            )
        return Route(PYFUNC_FRAMEWORK, "python_function", "", "", "asked for: served by MLflow pyfunc", True)
    for flavor, framework in _FLAVOR_FRAMEWORKS:
        conf = model.flavors.get(flavor)
        if conf is None:
            continue
        if flavor == "transformers":
            framework += str(conf.get("task") or "")
            if framework not in known:
                continue  # a task the catalog does not list: MLflow's pyfunc serves it below
        if requested and requested != framework:
            continue
        column = _non_numeric_column(model) if flavor in _NUMERIC_ONLY else None
        if column is not None and not requested and pyfunc is not None:
            return Route(
                PYFUNC_FRAMEWORK,
                "python_function",
                "",
                "",
                f"flavor {flavor} with the {column.type} column {column.name!r} (the {flavor} runtime and "
                "ONNX take numbers only): served by MLflow pyfunc",
                True,
            )
        artifact, serialization = _flavor_artifact(flavor, conf)
        return Route(framework, flavor, artifact, serialization, f"flavor {flavor}")
    if requested:
        raise ValueError(
            f"conversion.framework {requested!r} does not fit the model's flavors {list(model.flavors)}; "
            "leave it empty to route by flavor, or use 'mlflow'"
        )
    if pyfunc is None:
        raise ValueError(f"the model's flavors {list(model.flavors)} include none Flightline serves")
    others = [f for f in model.flavors if f != "python_function"]
    why = f"no ONNX or native runtime for flavor {others[0]}" if others else "a python_function model"
    return Route(PYFUNC_FRAMEWORK, "python_function", "", "", f"{why}: served by MLflow pyfunc", True)


def _flavor_artifact(flavor: str, conf: Mapping[str, Any]) -> tuple[str, str]:
    """(path inside the model directory, serialization) of a flavor's model."""
    if flavor == "onnx":
        return _relative(conf.get("data"), "model.onnx"), ""
    if flavor == "sklearn":
        return _relative(conf.get("pickled_model"), "model.pkl"), str(conf.get("serialization_format") or "")
    if flavor == "xgboost":
        return _relative(conf.get("data"), "model.xgb"), str(conf.get("model_format") or "")
    return "", ""  # the whole directory


def _relative(value: Any, default: str) -> str:
    """A path from MLmodel, which must stay inside the model directory."""
    path = PurePosixPath(str(value or default))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise NotAnMlflowModel(f"{MLMODEL} names a file outside the model directory: {str(path)[:200]!r}")
    return str(path)


# -- signatures -----------------------------------------------------------------------------------


def input_schema(model: MlflowModel) -> pa.Schema | None:
    """The Arrow schema of the signature's inputs (`runtimes/signatures.py`, the one converter of MLflow
    signatures, which pyfunc uses too): one field per named column, or one fixed-size list field per
    tensor (an unnamed tensor is `inputs`, the seed's form). None without a signature."""
    return _signature(model.signature.get("inputs"), "inputs")


def output_schema(model: MlflowModel) -> pa.Schema | None:
    """The signature's outputs, when every output is named (unnamed outputs are named by the runtime)."""
    specs = model.signature.get("outputs")
    if not isinstance(specs, list) or not all(isinstance(s, dict) and s.get("name") for s in specs):
        return None
    return _signature(specs, "outputs")


def params_schema(model: MlflowModel) -> pa.Schema | None:
    """The signature's params as Arrow fields (a `shape` makes a list); None when it declares none."""
    specs = model.signature.get("params")
    if not isinstance(specs, list) or not specs:
        return None
    try:
        return signatures.params(specs)
    except ModelLoadError as exc:
        raise NotAnMlflowModel(f"{MLMODEL}: {exc}") from None


def is_column_signature(model: MlflowModel) -> bool:
    specs = model.signature.get("inputs")
    return isinstance(specs, list) and bool(specs) and all(s.get("type") != "tensor" for s in specs)


def _non_numeric_column(model: MlflowModel) -> pa.Field | None:
    """The first column of a column signature that is not a number or a bool; None for tensors."""
    if not is_column_signature(model):
        return None
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    return next((f for f in input_schema(model) or () if not any(t(f.type) for t in numeric)), None)


def _signature(specs: Any, side: str) -> pa.Schema | None:
    if not isinstance(specs, list) or not specs:
        return None
    try:
        parsed = signatures.parse(specs, side)
    except ModelLoadError as exc:  # NotAnMlflowModel is what uploads report as INVALID_ARGUMENT
        raise NotAnMlflowModel(str(exc)) from None
    return parsed.schema if parsed is not None else None


def check_given(given: pa.Schema, signature: pa.Schema) -> None:
    """A user's input schema against the signature's: the same field names, each of a type the
    signature's values cast to without loss, or the seed's single `inputs` list of the same width.
    SignatureMismatch naming the field."""
    if given.names == ["inputs"] and signature.names != ["inputs"]:
        column = given.field("inputs").type
        width = getattr(column, "list_size", None)
        if width is not None and width != len(signature):
            raise SignatureMismatch(
                f"conversion.input_schema field 'inputs' has {width} values per row but the signature "
                f"has {len(signature)} columns {signature.names}"
            )
        return
    for field in signature:
        if given.get_field_index(field.name) < 0:
            raise SignatureMismatch(f"conversion.input_schema lacks field {field.name!r} of the signature")
    for field in given:
        index = signature.get_field_index(field.name)
        if index < 0:
            raise SignatureMismatch(
                f"conversion.input_schema field {field.name!r} is not in the signature {signature.names}"
            )
        wanted = signature.field(index).type
        if not _compatible(field.type, wanted):
            raise SignatureMismatch(
                f"conversion.input_schema field {field.name!r} is {field.type}; the signature says {wanted}"
            )


def _compatible(given: pa.DataType, wanted: pa.DataType) -> bool:
    if given.equals(wanted):
        return True
    numeric = pa.types.is_floating(given) or pa.types.is_integer(given)
    if numeric and (pa.types.is_floating(wanted) or pa.types.is_integer(wanted)):
        return True  # MLflow itself casts between numeric types; our runtimes take any of them
    if pa.types.is_fixed_size_list(given) and pa.types.is_fixed_size_list(wanted):
        return given.list_size == wanted.list_size and _compatible(given.value_type, wanted.value_type)
    return False
