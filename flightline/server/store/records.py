"""Plain, immutable records the stores return. The rest of the server never sees ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ModelStatus(StrEnum):
    PENDING_CONVERSION = "pending_conversion"
    CONVERTING = "converting"
    READY = "ready"
    ERROR = "error"


class DeploymentStatus(StrEnum):
    DEPLOYING = "deploying"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Workspace:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Registry:
    id: str  # UUID
    name: str
    url: str
    token: str  # "" when none; never leaves the server
    created_at: datetime
    updated_at: datetime
    workspace_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Conversion:
    framework: str
    python_version: str = ""
    requirements: tuple[str, ...] = ()
    input_schema: bytes = b""  # Arrow IPC-serialized schema, b"" when not given
    output_schema: bytes = b""
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MlflowOrigin:
    """Where an MLflow model came from and how it is served: the registry version it was pinned to (an
    alias resolved once, so the version is immutable), its flavors, and the flavor/file served."""

    uri: str = ""  # as asked, e.g. models:/fraud@champion
    name: str = ""  # registered model name
    version: str = ""  # registered version the upload resolved to ("" for a logged model m-<id>)
    alias: str = ""
    model_id: str = ""  # MLflow 3 logged model id
    run_id: str = ""
    mlflow_version: str = ""  # the MLflow that logged it
    flavors: tuple[str, ...] = ()
    flavor: str = ""  # the flavor it is served from
    serialization: str = ""  # e.g. skops, cloudpickle, ubj
    signature: str = ""  # "columns", "tensors" or "" (none)
    route: str = ""  # why this framework / runtime was chosen

    def to_json(self) -> dict[str, object]:
        return {**self.__dict__, "flavors": list(self.flavors)}

    @classmethod
    def from_json(cls, data: dict[str, object] | None) -> MlflowOrigin | None:
        if not data:
            return None
        flavors = data.get("flavors")
        known = {k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__ and k != "flavors"}
        listed = tuple(str(f) for f in flavors) if isinstance(flavors, list) else ()
        return cls(**known, flavors=listed)


@dataclass(frozen=True)
class ModelVersion:
    model_id: int
    model_name: str
    version: int
    framework: str
    runtime: str
    native: bool
    status: ModelStatus
    status_reason: str
    conversion_note: str
    input_schema: bytes
    output_schema: bytes
    sha256: str  # artifact the runtime loads
    size_bytes: int
    original_sha256: str  # artifact as uploaded
    source: str
    conversion: Conversion
    created_at: datetime
    updated_at: datetime
    owner: str = ""  # the server instance preparing it ("" before migration 0003 until claimed)
    origin: MlflowOrigin | None = None  # for MLflow models (migration 0006)
    converter: str = ""  # the converter and versions that converted it, or tried to


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    workspace_id: int
    visibility: str  # "private" | "public"
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeploymentStep:
    model_id: int
    version: int


@dataclass(frozen=True)
class StepPlacement:
    """Where a RUNNING deployment's step runs, so that any front door can route to it: inside the front
    door (which loads the step's model version itself) or remotely (the runtime server's Flight location
    and the key of the model there; "" while a runtime server serves one model)."""

    in_front_door: bool
    location: str = ""
    model_key: str = ""
    secret: str = field(default="", repr=False)  # what the runtime server demands of its callers


class RevisionStatus(StrEnum):
    PENDING = "pending"
    LIVE = "live"
    FAILED = "failed"


@dataclass(frozen=True)
class Plan:
    """What a deployment serves: its steps, an optional canary pipeline with the percentage of new
    streams it gets, and an optional shadow pipeline that requests are mirrored to."""

    steps: tuple[DeploymentStep, ...]
    canary: tuple[DeploymentStep, ...] = ()
    canary_percent: int = 0
    shadow: tuple[DeploymentStep, ...] = ()


@dataclass(frozen=True)
class Revision:
    deployment_id: int
    revision: int
    status: RevisionStatus
    status_reason: str
    actor: str
    reason: str
    plan: Plan
    created_at: datetime


@dataclass(frozen=True)
class Deployment:
    id: int
    name: str
    workspace_id: int
    status: DeploymentStatus
    status_reason: str
    steps: tuple[DeploymentStep, ...]
    created_at: datetime
    failed_by_fault: bool = False  # FAILED by a fault, not by the model: start-up retries it
    owner: str = ""  # the control-plane instance that starts its runtimes and resumes it
    placements: tuple[StepPlacement, ...] = ()  # one per step while RUNNING, () otherwise
    revision: int = 1  # the revision serving
    pending_revision: int = 0  # a change being loaded; 0 for none
    canary: tuple[DeploymentStep, ...] = ()
    canary_percent: int = 0
    shadow: tuple[DeploymentStep, ...] = ()
    # Where the canary's and the shadow's steps run while RUNNING, as `placements` for the steps.
    canary_placements: tuple[StepPlacement, ...] = ()
    shadow_placements: tuple[StepPlacement, ...] = ()

    @property
    def plan(self) -> Plan:
        return Plan(self.steps, self.canary, self.canary_percent, self.shadow)


@dataclass(frozen=True)
class Follow:
    """A deployment following a registry alias (`uri` = models:/<name>@<alias>): each new version the
    alias points at is uploaded as `model_name` with `conversion` and swapped in."""

    deployment_id: int
    registry_id: str
    uri: str
    model_name: str
    conversion: Conversion
    followed_version: str  # the registry version being served
    status_reason: str  # why the last move was not followed; "" when it was
    checked_at: datetime


@dataclass(frozen=True)
class User:
    id: int
    name: str
    admin: bool  # a platform administrator: every workspace, and users
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    """An API token as stored: never its secret, only a salted hash of it (kept in the store alone)."""

    id: str
    user_id: int
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class StoredToken:
    token: TokenInfo
    salt: bytes
    hash: bytes
    user: User
    roles: dict[int, str]  # workspace id -> role, the user's memberships


@dataclass(frozen=True)
class Member:
    workspace_id: int
    user_id: int
    user_name: str
    role: str  # viewer | editor | admin


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time: datetime
    user_id: int | None
    actor: str
    action: str
    resource: str
    workspace_id: int | None
    outcome: str
