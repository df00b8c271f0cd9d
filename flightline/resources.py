"""What the Python client returns: dataclasses built from the gRPC messages, with readable statuses."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa

from flightline import errors
from flightline.transport import exchange, exchange_answers, exchange_table
from flightline.v1 import access_pb2, deployment_pb2, model_pb2, registry_pb2, workspace_pb2

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
class User:
    """A user or service account; platform admins manage users and are admins of every workspace."""

    id: int
    name: str
    admin: bool
    create_time: datetime | None = None

    @classmethod
    def from_proto(cls, m: access_pb2.User) -> User:
        return cls(m.id, m.name, m.admin, _time(m, "create_time"))


@dataclass(frozen=True)
class Token:
    """An API token's public record (the secret is shown once, at creation, and never again)."""

    id: str
    user_id: int
    name: str
    create_time: datetime | None
    expire_time: datetime | None  # None: never expires
    revoke_time: datetime | None  # set once revoked

    @classmethod
    def from_proto(cls, m: access_pb2.Token) -> Token:
        times = (_time(m, t) for t in ("create_time", "expire_time", "revoke_time"))
        return cls(m.id, m.user_id, m.name, *times)


@dataclass(frozen=True)
class Member:
    """A user's role in a workspace: "viewer", "editor" or "admin"."""

    workspace_id: int
    user_id: int
    user_name: str
    role: str

    @classmethod
    def from_proto(cls, m: access_pb2.Member) -> Member:
        return cls(
            m.workspace_id, m.user_id, m.user_name, access_pb2.Role.Name(m.role).removeprefix("ROLE_").lower()
        )


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


def _pins(steps: Iterable[deployment_pb2.DeploymentStep]) -> tuple[DeploymentStep, ...]:
    return tuple(DeploymentStep(s.model_id, s.version, s.runtime, s.location) for s in steps)


@dataclass(frozen=True)
class ShadowStats:
    """What a deployment's shadow did on the server since it was set: batches mirrored, failed, dropped
    (its queue was full), rows whose answer differed from the deployment's, its latency."""

    batches: int
    rows: int
    failed: int
    dropped: int
    disagreeing_rows: int
    mean_latency_ms: float
    max_latency_ms: float

    @classmethod
    def from_proto(cls, m: deployment_pb2.ShadowStats) -> ShadowStats:
        return cls(
            m.batches, m.rows, m.failed, m.dropped, m.disagreeing_rows, m.mean_latency_ms, m.max_latency_ms
        )


@dataclass(frozen=True)
class AliasFollow:
    """A deployment following a registry alias: the alias's URI, the registry version being served, why
    the last move was not followed ("" when it was) and when the alias was last checked."""

    uri: str
    followed_version: str
    status_reason: str
    update_time: datetime | None

    @classmethod
    def from_proto(cls, m: deployment_pb2.AliasFollow) -> AliasFollow:
        return cls(m.uri, m.followed_version, m.status_reason, _time(m, "update_time"))


class RevisionStatus(enum.StrEnum):
    """A revision's state: PENDING while it loads, then LIVE or FAILED (the one before kept serving)."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    LIVE = "live"
    FAILED = "failed"

    @classmethod
    def from_proto(cls, value: int) -> RevisionStatus:
        return cls(deployment_pb2.RevisionStatus.Name(value).removeprefix("REVISION_STATUS_").lower())


@dataclass(frozen=True)
class Revision:
    """One change of a deployment: its deploy, an update, a traffic split or shadow change."""

    revision: int
    status: RevisionStatus
    status_reason: str
    actor: str
    reason: str
    steps: tuple[DeploymentStep, ...]
    canary_steps: tuple[DeploymentStep, ...]
    canary_percent: int
    shadow_steps: tuple[DeploymentStep, ...]
    create_time: datetime | None

    @classmethod
    def from_proto(cls, m: deployment_pb2.DeploymentRevision) -> Revision:
        return cls(
            m.revision,
            RevisionStatus.from_proto(m.status),
            m.status_reason,
            m.actor,
            m.reason,
            _pins(m.steps),
            _pins(m.canary_steps),
            m.canary_percent,
            _pins(m.shadow_steps),
            _time(m, "create_time"),
        )


@dataclass(frozen=True)
class AnsweredBy:
    """Which version answered a result batch, from its Flight app metadata (format in deployment.proto):
    the deployment revision whose routing chose it, "primary" or "canary", and (model id, version) per
    step."""

    revision: int
    variant: str
    steps: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, metadata: bytes) -> AnsweredBy:
        fields = dict(part.split("=", 1) for part in metadata.decode().split(";") if "=" in part)
        steps = tuple(
            (int(m), int(v)) for m, v in (s.split(":") for s in fields.get("steps", "").split(",") if s)
        )
        return cls(int(fields.get("revision", 0)), fields.get("variant", ""), steps)


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
    revision: int = 1
    pending_revision: int | None = None  # a change being loaded and warmed
    canary_steps: tuple[DeploymentStep, ...] = ()
    canary_percent: int = 0
    shadow_steps: tuple[DeploymentStep, ...] = ()
    shadow_stats: ShadowStats | None = None
    follow: AliasFollow | None = None  # the registry alias it follows, if any

    @classmethod
    def from_proto(cls, m: deployment_pb2.Deployment, client: Flightline | None = None) -> Deployment:
        return cls(
            m.id,
            m.name,
            m.workspace_id,
            DeploymentStatus.from_proto(m.status),
            m.status_reason,
            m.flight_location,
            _pins(m.steps),
            _schema(m.input_schema),
            _schema(m.output_schema),
            _time(m, "create_time"),
            m.flight_path,
            client,
            revision=m.revision,
            pending_revision=m.pending_revision if m.HasField("pending_revision") else None,
            canary_steps=_pins(m.canary_steps),
            canary_percent=m.canary_percent,
            shadow_steps=_pins(m.shadow_steps),
            shadow_stats=ShadowStats.from_proto(m.shadow_stats) if m.HasField("shadow_stats") else None,
            follow=AliasFollow.from_proto(m.follow) if m.HasField("follow") else None,
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

    def stream_answers(
        self, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *, envelope: bool = False
    ) -> Iterator[tuple[pa.RecordBatch, AnsweredBy]]:
        """As `stream`, with which version answered each result batch."""
        conn = self.client._flight(self.flight_location)
        with self.client._flight_errors():
            for batch, metadata in exchange_answers(
                conn, self._path(envelope), schema, batches, self.client._flight_options
            ):
                yield batch, AnsweredBy.parse(metadata)

    def update(
        self, *steps: Any, reason: str = "", wait: bool = True, timeout: float | None = None
    ) -> Deployment:
        """Moves the deployment to other model versions without downtime (see `Flightline.update`)."""
        return self.client.update(
            self.name, *steps, workspace=self.workspace_id, reason=reason, wait=wait, timeout=timeout
        )

    def split(
        self, percent: int, *canary: Any, reason: str = "", wait: bool = True, timeout: float | None = None
    ) -> Deployment:
        """Sends `percent` percent of new streams to the `canary` steps (see `Flightline.split`)."""
        return self.client.split(
            self.name,
            percent,
            *canary,
            workspace=self.workspace_id,
            reason=reason,
            wait=wait,
            timeout=timeout,
        )

    def shadow(
        self, *steps: Any, reason: str = "", wait: bool = True, timeout: float | None = None
    ) -> Deployment:
        """Mirrors requests to the `steps`; none removes the shadow (see `Flightline.shadow`)."""
        return self.client.shadow(
            self.name, *steps, workspace=self.workspace_id, reason=reason, wait=wait, timeout=timeout
        )

    def history(self, *, page_size: int = 0) -> Iterator[Revision]:
        """The deployment's revisions, oldest first."""
        return self.client.deployments.history(self.name, workspace=self.workspace_id, page_size=page_size)

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
