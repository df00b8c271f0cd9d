"""SQLAlchemy tables of the metadata store. Migrations in `migrations/versions/` must create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, so we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, bytes: LargeBinary, str: Text}


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime]


class RegistryRow(Base):
    __tablename__ = "registries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str]
    url: Mapped[str]
    token: Mapped[str]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    links: Mapped[list[RegistryWorkspaceRow]] = relationship(
        cascade="all, delete-orphan", order_by="RegistryWorkspaceRow.workspace_id"
    )


class RegistryWorkspaceRow(Base):
    __tablename__ = "registry_workspaces"

    registry_id: Mapped[str] = mapped_column(String(36), ForeignKey("registries.id"), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), primary_key=True, index=True)


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_models_workspace_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str]
    visibility: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (Index("ix_model_versions_status", "status"),)

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    framework: Mapped[str]
    runtime: Mapped[str]
    native: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str]
    conversion_note: Mapped[str]
    input_schema: Mapped[bytes]
    output_schema: Mapped[bytes]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    original_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str]
    # The Conversion the version was uploaded with, as asked (schemas there may differ from the served ones).
    conversion_framework: Mapped[str]
    conversion_python_version: Mapped[str]
    conversion_requirements: Mapped[list[str]] = mapped_column(JSON)
    conversion_input_schema: Mapped[bytes]
    conversion_output_schema: Mapped[bytes]
    conversion_options: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The server instance that prepares the version: only it fails the version if it is interrupted.
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # An MLflow model's origin (records.MlflowOrigin as JSON); None for other uploads.
    origin: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    converter: Mapped[str] = mapped_column(default="", server_default="")


class DeploymentRow(Base):
    __tablename__ = "deployments"
    # Names are unique per workspace (migration 0005): two teams may both deploy "fraud".
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_deployments_workspace_id_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str]
    # FAILED by a fault (a runtime that crashed, timed out or found its port taken), not by the model:
    # start-up retries such deployments. False for every other status.
    failed_by_fault: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]
    # The control-plane instance that starts the deployment's runtimes; the only one that resumes it.
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    steps: Mapped[list[DeploymentStepRow]] = relationship(
        cascade="all, delete-orphan", order_by="DeploymentStepRow.position"
    )
    # The revision serving now, and the one being loaded (0: none). See DeploymentRevisionRow.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    pending_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # JSON of the traffic split and the shadow (store/metadata.py `_variants`); "" for none.
    variants: Mapped[str] = mapped_column(default="", server_default="")
    revisions: Mapped[list[DeploymentRevisionRow]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class DeploymentStepRow(Base):
    __tablename__ = "deployment_steps"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_id", "version"],
            ["model_versions.model_id", "model_versions.version"],
            name="fk_deployment_steps_model_id_model_versions",
        ),
    )

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    model_id: Mapped[int] = mapped_column(Integer, index=True)
    version: Mapped[int] = mapped_column(Integer)
    # Where the step runs while the deployment is RUNNING, for front doors in other processes: inside
    # the front door (it loads the version's artifact itself) or on the runtime server at `location`
    # serving `model_key`. Cleared when the deployment stops running.
    in_front_door: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    location: Mapped[str] = mapped_column(default="", server_default="")
    model_key: Mapped[str] = mapped_column(default="", server_default="")
    # The secret the runtime server at `location` demands of its callers, encrypted at rest like
    # registry tokens (store/secrets.py): front doors in other processes read it here.
    runtime_secret: Mapped[str] = mapped_column(default="", server_default="")


class FollowRow(Base):
    """A deployment that follows a registry alias: what to upload when it moves, and where it stands."""

    __tablename__ = "deployment_follows"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    registry_id: Mapped[str] = mapped_column(String(36))
    uri: Mapped[str]  # models:/<name>@<alias>
    model_name: Mapped[str]  # the Flightline model its versions are uploaded as
    # The upload's Conversion, replayed for each new version (records.Conversion as JSON).
    conversion: Mapped[dict[str, Any]] = mapped_column(JSON)
    followed_version: Mapped[str]  # the registry version now served
    status_reason: Mapped[str]  # why the last move was not followed, "" when it was
    checked_at: Mapped[datetime]


class DeploymentRevisionRow(Base):
    """One change of a deployment (its deploy, an update, a split or shadow change): who, when, why,
    the plan asked for (JSON: steps, canary, canary percent, shadow) and whether it went live."""

    __tablename__ = "deployment_revisions"

    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str]
    actor: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str]
    plan: Mapped[str]
    created_at: Mapped[datetime]


class RouteStateRow(Base):
    """One row whose `version` goes up with every change of a deployment: front doors poll it (one cheap
    read) and re-read the deployments only when it moved."""

    __tablename__ = "route_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class UserRow(Base):
    """A user or service account. `admin`: a platform administrator (every workspace, users)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]


class TokenRow(Base):
    """An API token: only a salted hash of its secret part is kept (server/access/tokens.py)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str]
    salt: Mapped[bytes]
    hash: Mapped[bytes]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MemberRow(Base):
    """A user's role in a workspace: viewer, editor or admin."""

    __tablename__ = "workspace_members"

    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))


class AuditRow(Base):
    """Who did what to which resource; never a token, never a payload."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str]
    action: Mapped[str]
    resource: Mapped[str]
    workspace_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    outcome: Mapped[str] = mapped_column(String(32))
