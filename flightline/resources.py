"""What the Python client returns: dataclasses built from the gRPC messages, with readable statuses."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa

from flightline import errors
from flightline.transport import exchange, exchange_table
from flightline.v1 import deployment_pb2, model_pb2, registry_pb2, workspace_pb2

if TYPE_CHECKING:
    import pandas as pd

    from flightline.client import Flightline


class ModelStatus(enum.StrEnum):
    """A model version's state: PENDING_CONVERSION -> CONVERTING -> READY | ERROR."""

    UNSPECIFIED = "unspecified"
    PENDING_CONVERSION = "pending_conversion"
    CONVERTING = "converting"
    READY = "ready"
    ERROR = "error"

    @classmethod
    def from_proto(cls, value: int) -> ModelStatus:
        return cls(model_pb2.ModelStatus.Name(value).removeprefix("MODEL_STATUS_").lower())


class DeploymentStatus(enum.StrEnum):
    """A deployment's state: DEPLOYING -> RUNNING | FAILED; STOPPED once undeployed."""

    UNSPECIFIED = "unspecified"
    DEPLOYING = "deploying"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"

    @classmethod
    def from_proto(cls, value: int) -> DeploymentStatus:
        return cls(deployment_pb2.DeploymentStatus.Name(value).removeprefix("DEPLOYMENT_STATUS_").lower())


def _time(message: Any, name: str) -> datetime | None:
    return message.__getattribute__(name).ToDatetime(tzinfo=UTC) if message.HasField(name) else None


def _schema(data: bytes) -> pa.Schema | None:
    return pa.ipc.read_schema(pa.py_buffer(data)) if data else None


@dataclass(frozen=True)
class Workspace:
    """A workspace: models, registries and deployments belong to one."""

    id: int
    name: str
    create_time: datetime | None = None

    @classmethod
    def from_proto(cls, m: workspace_pb2.Workspace) -> Workspace:
        return cls(m.id, m.name, _time(m, "create_time"))


@dataclass(frozen=True)
class Registry:
    """A connection to an MLflow (or Databricks) model registry, attached to workspaces."""

    id: str
    name: str
    url: str
    has_token: bool
    workspace_ids: tuple[int, ...]

    @classmethod
    def from_proto(cls, m: registry_pb2.Registry) -> Registry:
        return cls(m.id, m.name, m.url, m.has_token, tuple(m.workspace_ids))


@dataclass(frozen=True)
class RegisteredModelVersion:
    """A version of a model in an MLflow registry."""

    name: str
    version: str
    status: str
    source: str
    run_id: str
    current_stage: str
    description: str = ""

    @classmethod
    def from_proto(cls, m: registry_pb2.RegisteredModelVersion) -> RegisteredModelVersion:
        return cls(m.name, m.version, m.status, m.source, m.run_id, m.current_stage, m.description)


@dataclass(frozen=True)
class RegisteredModel:
    """A model in an MLflow registry."""

    name: str
    description: str
    latest_versions: tuple[RegisteredModelVersion, ...]

    @classmethod
    def from_proto(cls, m: registry_pb2.RegisteredModel) -> RegisteredModel:
        versions = tuple(RegisteredModelVersion.from_proto(v) for v in m.latest_versions)
        return cls(m.name, m.description, versions)


@dataclass(frozen=True)
class RegistryArtifact:
    """A file (or folder) of a registry model version; `path` is what `upload(..., registry=)` takes."""

    path: str
    full_path: str
    file_size: int
    is_dir: bool

    @classmethod
    def from_proto(cls, m: registry_pb2.RegistryArtifact) -> RegistryArtifact:
        return cls(m.path, m.full_path, m.file_size, m.is_dir)


@dataclass(frozen=True)
class ModelVersion:
    """One uploaded version of a model. `status` is READY once it can be deployed; `status_reason` says
    why it is ERROR; `conversion_note` why a convertible model runs on its original runtime (or which
    conversion route won, for frameworks with several)."""

    model_id: int
    model_name: str
    version: int
    framework: str
    runtime: str
    status: ModelStatus
    status_reason: str
    conversion_note: str
    input_schema: pa.Schema | None
    output_schema: pa.Schema | None
    sha256: str
    size_bytes: int
    source: str
    create_time: datetime | None = None
    # For an MLflow model: the registry version it was pinned to and the flavor served ({} otherwise),
    # e.g. {"name": "fraud", "version": "3", "alias": "champion", "flavor": "sklearn", ...}.
    mlflow: dict[str, object] = field(default_factory=dict)
    converter: str = ""

    @classmethod
    def from_proto(cls, m: model_pb2.ModelVersion) -> ModelVersion:
        return cls(
            m.model_id,
            m.model_name,
            m.version,
            m.framework,
            m.runtime,
            ModelStatus.from_proto(m.status),
            m.status_reason,
            m.conversion_note,
            _schema(m.input_schema),
            _schema(m.output_schema),
            m.sha256,
            m.size_bytes,
            m.source,
            _time(m, "create_time"),
            _origin(m),
            m.converter,
        )


@dataclass(frozen=True)
class Model:
    """A model (a name in a workspace) and its latest version."""

    id: int
    name: str
    workspace_id: int
    public: bool
    latest_version: ModelVersion | None

    @classmethod
    def from_proto(cls, m: model_pb2.Model) -> Model:
        latest = ModelVersion.from_proto(m.latest_version) if m.HasField("latest_version") else None
        return cls(m.id, m.name, m.workspace_id, m.visibility == model_pb2.VISIBILITY_PUBLIC, latest)


@dataclass(frozen=True)
class Framework:
    """A framework of the catalog; `available` says whether a runtime serves it today."""

    name: str
    runtime: str
    available: bool
    converts_to_onnx: bool
    file_types: str
    install_hint: str

    @classmethod
    def from_proto(cls, m: model_pb2.Framework) -> Framework:
        return cls(m.name, m.runtime, m.available, m.converts_to_onnx, m.file_types, m.install_hint)


@dataclass(frozen=True)
class DeploymentStep:
    """One step of a deployment's pipeline: which model version runs on which runtime, where."""

    model_id: int
    version: int
    runtime: str
    location: str


Columns: TypeAlias = "pa.Table | pa.RecordBatch | Mapping[str, Any] | pd.DataFrame"


@dataclass(frozen=True)
class Deployment:
    """A named inference endpoint: a pipeline of model versions served over Arrow Flight."""

    id: int
    name: str
    workspace_id: int
    status: DeploymentStatus
    status_reason: str
    flight_location: str
    steps: tuple[DeploymentStep, ...]
    input_schema: pa.Schema | None
    output_schema: pa.Schema | None
    create_time: datetime | None
    # The Flight descriptor path element naming it at the front door, "<workspace id>/<name>".
    flight_path: str = ""
    _client: Flightline | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: deployment_pb2.Deployment, client: Flightline | None = None) -> Deployment:
        steps = tuple(DeploymentStep(s.model_id, s.version, s.runtime, s.location) for s in m.steps)
        return cls(
            m.id,
            m.name,
            m.workspace_id,
            DeploymentStatus.from_proto(m.status),
            m.status_reason,
            m.flight_location,
            steps,
            _schema(m.input_schema),
            _schema(m.output_schema),
            _time(m, "create_time"),
            m.flight_path,
            client,
        )

    @property
    def client(self) -> Flightline:
        if self._client is None:
            raise RuntimeError("this Deployment was not obtained from a Flightline client")
        return self._client

    def to_table(self, data: Columns) -> pa.Table:
        """`data` as an Arrow table in the deployment's input schema (dicts and DataFrames are converted
        with it, so a column of Python lists becomes the fixed-size tensor the model expects)."""
        if isinstance(data, pa.Table):
            return data
        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if isinstance(data, Mapping):
            return pa.table(dict(data), schema=self.input_schema)
        try:  # a pandas DataFrame (pandas is imported only when one is passed)
            return pa.Table.from_pandas(data, schema=self.input_schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise errors.InvalidArgumentError(
                f"cannot convert the input to the deployment's schema: {error}"
            ) from None

    def infer(self, data: Columns, *, envelope: bool = False) -> pa.Table:
        """Runs the deployment on `data` (a pyarrow Table or RecordBatch, a pandas DataFrame or a dict of
        columns) over Arrow Flight and returns the results: the `out.` columns, or with `envelope=True`
        the full envelope (`time`, `in.<col>`, `out.<col>`, `check_failures`)."""
        table = self.to_table(data)
        conn = self.client._flight(self.flight_location)
        with self.client._flight_errors():
            return exchange_table(conn, self._path(envelope), table, self.client._flight_options)

    def _path(self, envelope: bool) -> list[str]:
        path = self.flight_path or self.name  # as the server gives it: clients never build it
        return [path] if envelope else [path, "outputs"]

    def stream(
        self, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *, envelope: bool = False
    ) -> Iterator[pa.RecordBatch]:
        """Streams record batches through the deployment, yielding one result batch per input batch."""
        conn = self.client._flight(self.flight_location)
        with self.client._flight_errors():
            yield from exchange(conn, self._path(envelope), schema, batches, self.client._flight_options)

    def undeploy(self) -> Deployment:
        """Stops the deployment; returns it STOPPED."""
        return self.client.undeploy(self.name, workspace=self.workspace_id)

    def refresh(self) -> Deployment:
        """The deployment's current state."""
        return self.client.deployments.get(self.name, workspace=self.workspace_id)


def _origin(m: model_pb2.ModelVersion) -> dict[str, object]:
    if not m.HasField("mlflow"):
        return {}
    o = m.mlflow
    fields = ("uri", "name", "version", "alias", "model_id", "run_id", "mlflow_version", "flavor")
    origin: dict[str, object] = {name: getattr(o, name) for name in fields}
    origin.update(
        serialization=o.serialization, signature=o.signature, route=o.route, flavors=list(o.flavors)
    )
    return origin
