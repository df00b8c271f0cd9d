"""Metadata store: workspaces, registries, models and deployments in SQL (SQLite by default, PostgreSQL too).

Every method runs in its own short transaction and returns plain records (`records.py`), never ORM rows.
Writers serialize per SQLite file (`BEGIN IMMEDIATE`) and on row locks in PostgreSQL; a unique-constraint
race between concurrent writers is retried, so e.g. two uploads of one name never get the same version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, make_url, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from flightline.server import calls
from flightline.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from flightline.server.store.access import AccessRecords
from flightline.server.store.records import (
    Conversion,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    Follow,
    MlflowOrigin,
    Model,
    ModelStatus,
    ModelVersion,
    Plan,
    Registry,
    Revision,
    RevisionStatus,
    StepPlacement,
    Workspace,
)
from flightline.server.store.secrets import Secrets, process_secrets
from flightline.server.store.tables import (
    DeploymentRevisionRow,
    DeploymentRow,
    DeploymentStepRow,
    FollowRow,
    ModelRow,
    ModelVersionRow,
    RegistryRow,
    RegistryWorkspaceRow,
    RouteStateRow,
    WorkspaceRow,
    utc_now,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# How long a writer waits for another's SQLite write lock, at most; a call waits no longer than its deadline
# allows, less LOCK_WAIT_MARGIN_S so that its UNAVAILABLE reaches the client before the deadline does.
SQLITE_BUSY_TIMEOUT_S = 30
LOCK_WAIT_MARGIN_S = 0.1
BUSY = "the metadata store is busy with another writer; retry shortly"
WRITE_OPTION = "flightline_write"  # execution option that makes a SQLite transaction BEGIN IMMEDIATE
CONFLICT_ATTEMPTS = 5
VISIBILITIES = ("private", "public")
MAX_WORKSPACE_NAME = 100
# Any constant: serializes schema upgrades of several servers starting on one PostgreSQL database.
PG_MIGRATION_LOCK = 0x466C6967


class MetadataStore(AccessRecords):
    """`owner` is the id of the server instance using the store: new versions and deployments record it,
    so that start-up recovery can touch only its own work when several instances share a database.
    `secrets` encrypts registry tokens and runtime servers' secrets at rest (None: a key of this process
    only, for tools and tests; servers pass the key from their settings)."""

    def __init__(self, url: str, owner: str = "", *, secrets: Secrets | None = None) -> None:
        self.owner = owner
        self.secrets = secrets or process_secrets()
        self._engine = _create_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._upgrade_schema()

    def close(self) -> None:
        self._engine.dispose()

    # -- workspaces

    def create_workspace(self, name: str) -> Workspace:
        if not 1 <= len(name) <= MAX_WORKSPACE_NAME:
            raise InvalidArgument(
                f"workspace name must be 1 to {MAX_WORKSPACE_NAME} characters, got {len(name)}"
            )

        def create(session: Session) -> Workspace:
            if session.scalar(select(WorkspaceRow.id).where(WorkspaceRow.name == name)) is not None:
                raise AlreadyExists(f"workspace {name!r} already exists")
            row = WorkspaceRow(name=name, created_at=utc_now())
            session.add(row)
            session.flush()
            return _workspace(row)

        return self._write(create)

    def get_workspace(self, workspace_id: int) -> Workspace:
        with self._read() as session:
            return _workspace(_workspace_row(session, workspace_id))

    def list_workspaces(
        self, limit: int, after_id: int = 0, only: Collection[int] | None = None
    ) -> list[Workspace]:
        """Workspaces by id; with `only`, just those (the ones a caller is a member of)."""
        query = select(WorkspaceRow).where(WorkspaceRow.id > after_id).order_by(WorkspaceRow.id).limit(limit)
        if only is not None:
            query = query.where(WorkspaceRow.id.in_(list(only)))
        with self._read() as session:
            return [_workspace(row) for row in session.scalars(query)]

    # -- registries

    def create_registry(self, workspace_id: int, name: str, url: str, token: str) -> Registry:
        def create(session: Session) -> Registry:
            _workspace_row(session, workspace_id)
            now = utc_now()
            row = RegistryRow(
                id=str(uuid4()),
                name=name,
                url=url,
                token=self.secrets.encrypt(token),
                created_at=now,
                updated_at=now,
            )
            row.links.append(RegistryWorkspaceRow(workspace_id=workspace_id))
            session.add(row)
            session.flush()
            return self._registry(row)

        return self._write(create)

    def attach_registry(self, registry_id: str, workspace_id: int) -> Registry:
        """Makes a registry available to a workspace; attaching twice changes nothing."""

        def attach(session: Session) -> Registry:
            row = _registry_row(session, registry_id)
            _workspace_row(session, workspace_id)
            if all(link.workspace_id != workspace_id for link in row.links):
                row.links.append(RegistryWorkspaceRow(workspace_id=workspace_id))
                row.updated_at = utc_now()
                session.flush()
            return self._registry(row)

        return self._write(attach)

    def detach_registry(self, registry_id: str, workspace_id: int) -> Registry:
        def detach(session: Session) -> Registry:
            row = _registry_row(session, registry_id)
            link = next((link for link in row.links if link.workspace_id == workspace_id), None)
            if link is None:
                raise NotFound(f"registry {registry_id} is not attached to workspace {workspace_id}")
            row.links.remove(link)
            row.updated_at = utc_now()
            session.flush()
            return self._registry(row)

        return self._write(detach)

    def get_registry(self, registry_id: str) -> Registry:
        with self._read() as session:
            return self._registry(_registry_row(session, registry_id))

    def list_registries(
        self, workspace_id: int, limit: int | None = None, after_id: str = ""
    ) -> list[Registry]:
        """The registries attached to a workspace in creation order; `after_id` continues after that
        registry (registries are never deleted, so its creation time stays there to compare with)."""
        query = (
            select(RegistryRow)
            .join(RegistryWorkspaceRow)
            .where(RegistryWorkspaceRow.workspace_id == workspace_id)
            .order_by(RegistryRow.created_at, RegistryRow.id)
            .limit(limit)
        )
        with self._read() as session:
            _workspace_row(session, workspace_id)
            if after_id:
                after = session.get(RegistryRow, after_id)
                if after is None:
                    raise InvalidArgument("page_token was not issued by this server: pass a next_page_token")
                query = query.where(
                    (RegistryRow.created_at > after.created_at)
                    | ((RegistryRow.created_at == after.created_at) & (RegistryRow.id > after.id))
                )
            return [self._registry(row) for row in session.scalars(query)]

    # -- models

    def add_model_version(
        self,
        *,
        workspace_id: int,
        name: str,
        visibility: str,
        framework: str,
        runtime: str,
        native: bool,
        status: ModelStatus,
        conversion: Conversion,
        source: str,
        sha256: str,
        size_bytes: int,
        original_sha256: str,
        input_schema: bytes = b"",
        output_schema: bytes = b"",
        conversion_note: str = "",
        status_reason: str = "",
        origin: MlflowOrigin | None = None,
    ) -> ModelVersion:
        """Adds version 1 of a new model, or the next version of an existing one (whose visibility follows
        the newest upload)."""
        if visibility not in VISIBILITIES:
            raise InvalidArgument(f"visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}")

        def add(session: Session) -> ModelVersion:
            _workspace_row(session, workspace_id)
            now = utc_now()
            model = session.scalars(
                select(ModelRow)
                .where(ModelRow.workspace_id == workspace_id, ModelRow.name == name)
                .with_for_update()  # PostgreSQL: concurrent uploads of one name take turns here
            ).one_or_none()
            if model is None:
                model = ModelRow(workspace_id=workspace_id, name=name, visibility=visibility)
                model.created_at = now
                model.updated_at = now
                session.add(model)
                session.flush()
            else:
                model.visibility = visibility
                model.updated_at = now
            latest = session.scalar(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == model.id)
            )
            row = ModelVersionRow(
                model_id=model.id,
                version=(latest or 0) + 1,
                framework=framework,
                runtime=runtime,
                native=native,
                status=ModelStatus(status).value,
                status_reason=status_reason,
                conversion_note=conversion_note,
                input_schema=input_schema,
                output_schema=output_schema,
                sha256=sha256,
                size_bytes=size_bytes,
                original_sha256=original_sha256,
                source=source,
                conversion_framework=conversion.framework,
                conversion_python_version=conversion.python_version,
                conversion_requirements=list(conversion.requirements),
                conversion_input_schema=conversion.input_schema,
                conversion_output_schema=conversion.output_schema,
                conversion_options=dict(conversion.options),
                created_at=now,
                updated_at=now,
                owner=self.owner,
                origin=None if origin is None else origin.to_json(),
            )
            session.add(row)
            session.flush()
            return _version(row, model.name)

        return self._write(add)

    def update_model_version(
        self,
        model_id: int,
        version: int,
        *,
        status: ModelStatus | None = None,
        status_reason: str | None = None,
        conversion_note: str | None = None,
        runtime: str | None = None,
        native: bool | None = None,
        sha256: str | None = None,
        size_bytes: int | None = None,
        input_schema: bytes | None = None,
        output_schema: bytes | None = None,
        converter: str | None = None,
        requirements: tuple[str, ...] | None = None,
        python_version: str | None = None,
    ) -> ModelVersion:
        """Changes the given fields (None leaves a field as it is). `requirements` and `python_version`
        are the conversion's: what the model's environment is built from."""
        changes: dict[str, Any] = {
            "conversion_requirements": None if requirements is None else list(requirements),
            "conversion_python_version": python_version,
            "status": None if status is None else ModelStatus(status).value,
            "status_reason": status_reason,
            "conversion_note": conversion_note,
            "runtime": runtime,
            "native": native,
            "sha256": sha256,
            "size_bytes": size_bytes,
            "input_schema": input_schema,
            "output_schema": output_schema,
            "converter": converter,
        }

        def update(session: Session) -> ModelVersion:
            row, model_name = _version_row(session, model_id, version)
            for column, value in changes.items():
                if value is not None:
                    setattr(row, column, value)
            row.updated_at = utc_now()
            session.flush()
            return _version(row, model_name)

        return self._write(update)

    def get_model(self, model_id: int) -> Model:
        with self._read() as session:
            return _model(_model_row(session, model_id))

    def find_model(self, workspace_id: int, name: str) -> Model | None:
        query = select(ModelRow).where(ModelRow.workspace_id == workspace_id, ModelRow.name == name)
        with self._read() as session:
            row = session.scalars(query).one_or_none()
            return None if row is None else _model(row)

    def list_models(self, workspace_id: int, limit: int, after_id: int = 0) -> list[Model]:
        """The workspace's own models and every workspace's public ones, by id."""
        query = (
            select(ModelRow)
            .where(
                (ModelRow.workspace_id == workspace_id) | (ModelRow.visibility == "public"),
                ModelRow.id > after_id,
            )
            .order_by(ModelRow.id)
            .limit(limit)
        )
        with self._read() as session:
            _workspace_row(session, workspace_id)
            return [_model(row) for row in session.scalars(query)]

    def get_model_version(self, model_id: int, version: int = 0) -> ModelVersion:
        """One version of a model; version 0 means the latest."""
        with self._read() as session:
            return _version(*_version_row(session, model_id, version))

    def latest_versions(self, model_ids: Sequence[int]) -> dict[int, ModelVersion]:
        """The latest version of each model, in one query (for listing pages of models)."""
        newest = (
            select(ModelVersionRow.model_id, func.max(ModelVersionRow.version).label("version"))
            .where(ModelVersionRow.model_id.in_(model_ids))
            .group_by(ModelVersionRow.model_id)
            .subquery()
        )
        query = (
            select(ModelVersionRow, ModelRow.name)
            .join(
                newest,
                (ModelVersionRow.model_id == newest.c.model_id)
                & (ModelVersionRow.version == newest.c.version),
            )
            .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        )
        with self._read() as session:
            return {row.model_id: _version(row, name) for row, name in session.execute(query)}

    def list_model_versions(self, model_id: int, limit: int, after_version: int = 0) -> list[ModelVersion]:
        query = (
            select(ModelVersionRow)
            .where(ModelVersionRow.model_id == model_id, ModelVersionRow.version > after_version)
            .order_by(ModelVersionRow.version)
            .limit(limit)
        )
        with self._read() as session:
            model = _model_row(session, model_id)
            return [_version(row, model.name) for row in session.scalars(query)]

    def versions_in_status(self, *statuses: ModelStatus, owner: str | None = None) -> list[ModelVersion]:
        """Versions in any of `statuses`; only those `owner` prepares unless owner is None."""
        query = (
            select(ModelVersionRow, ModelRow.name)
            .join(ModelRow)
            .where(ModelVersionRow.status.in_([ModelStatus(s).value for s in statuses]))
            .order_by(ModelVersionRow.model_id, ModelVersionRow.version)
        )
        if owner is not None:
            query = query.where(ModelVersionRow.owner == owner)
        with self._read() as session:
            return [_version(row, name) for row, name in session.execute(query)]

    # -- deployments

    def create_deployment(
        self,
        workspace_id: int,
        name: str,
        steps: Sequence[DeploymentStep],
        *,
        actor: str = "",
        reason: str = "deploy",
    ) -> Deployment:
        """Records a new DEPLOYING deployment and its revision 1 (pending until it runs or fails). A STOPPED
        deployment of the same name is replaced, its revisions with it."""
        if not steps:
            raise InvalidArgument(f"deployment {name!r} needs at least one step")
        for step in steps:
            if step.version <= 0:
                raise InvalidArgument(f"deployment step of model {step.model_id}: give its version number")

        def create(session: Session) -> Deployment:
            _workspace_row(session, workspace_id)
            for step in steps:
                _version_row(session, step.model_id, step.version)
            existing = session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.workspace_id == workspace_id, DeploymentRow.name == name)
                .with_for_update()
            ).one_or_none()
            if existing is not None:
                if existing.status != DeploymentStatus.STOPPED:
                    raise AlreadyExists(f"deployment {name!r} already exists ({existing.status})")
                session.delete(existing)
                session.flush()
            row = DeploymentRow(
                name=name,
                workspace_id=workspace_id,
                status=DeploymentStatus.DEPLOYING.value,
                status_reason="",
                failed_by_fault=False,
                created_at=utc_now(),
                owner=self.owner,
                steps=[
                    DeploymentStepRow(position=i, model_id=step.model_id, version=step.version)
                    for i, step in enumerate(steps)
                ],
            )
            session.add(row)
            session.flush()
            session.add(_revision_row(row.id, 1, Plan(tuple(steps)), actor, reason))
            _routes_changed(session)
            return self._deployment(row)

        return self._write(create)

    def update_deployment(
        self,
        workspace_id: int,
        name: str,
        status: DeploymentStatus,
        status_reason: str = "",
        *,
        by_fault: bool = False,
        placements: Sequence[StepPlacement] = (),
    ) -> Deployment:
        """Sets the status; `by_fault` marks a FAILED deployment as failed by a fault (retried at start-up)
        rather than by its model, and is ignored for other statuses. `placements` (one per step) say where
        a RUNNING deployment's steps run; any other status clears them."""
        running = status is DeploymentStatus.RUNNING

        def update(session: Session) -> Deployment:
            row = _deployment_row(session, workspace_id, name)
            if running and placements and len(placements) != len(row.steps):
                raise ValueError(
                    f"deployment {name!r}: {len(placements)} placements for {len(row.steps)} steps"
                )
            row.status = DeploymentStatus(status).value
            row.status_reason = status_reason
            row.failed_by_fault = by_fault and status is DeploymentStatus.FAILED
            for index, step in enumerate(row.steps):
                placed = placements[index] if running and placements else StepPlacement(False)
                step.in_front_door = placed.in_front_door
                step.location = placed.location
                step.model_key = placed.model_key
                step.runtime_secret = self.secrets.encrypt(placed.secret)
            if not running:  # where the canary and shadow ran is known only while RUNNING
                row.variants = _variants_json(
                    _variants_of(row.variants, self.secrets)[0], (), (), self.secrets
                )
            if status in (DeploymentStatus.RUNNING, DeploymentStatus.FAILED) and not row.pending_revision:
                # The deploy's own revision (or a resumed one) settles with the deployment.
                live = session.get(DeploymentRevisionRow, (row.id, row.revision))
                if live is not None and live.status == RevisionStatus.PENDING.value:
                    live.status = (RevisionStatus.LIVE if running else RevisionStatus.FAILED).value
                    live.status_reason = status_reason
            session.flush()
            _routes_changed(session)
            return self._deployment(row)

        return self._write(update)

    def get_deployment(self, workspace_id: int, name: str) -> Deployment:
        with self._read() as session:
            return self._deployment(_deployment_row(session, workspace_id, name))

    def deployments_named(self, name: str) -> list[Deployment]:
        """The deployments called `name`, in any workspace (names are unique per workspace only)."""
        query = select(DeploymentRow).where(DeploymentRow.name == name).order_by(DeploymentRow.id)
        with self._read() as session:
            return [self._deployment(row) for row in session.scalars(query)]

    def list_deployments(
        self,
        workspace_id: int | None = None,
        limit: int | None = None,
        after_id: int = 0,
        *,
        only: Collection[int] | None = None,
    ) -> list[Deployment]:
        """Deployments of one workspace, or of all when workspace_id is None (of the workspaces in `only`,
        when given), by id, after `after_id`."""
        query = (
            select(DeploymentRow).where(DeploymentRow.id > after_id).order_by(DeploymentRow.id).limit(limit)
        )
        if only is not None:
            query = query.where(DeploymentRow.workspace_id.in_(list(only)))
        with self._read() as session:
            if workspace_id is not None:
                _workspace_row(session, workspace_id)
                query = query.where(DeploymentRow.workspace_id == workspace_id)
            return [self._deployment(row) for row in session.scalars(query)]

    def set_variant_placements(
        self, workspace_id: int, name: str, canary: Sequence[StepPlacement], shadow: Sequence[StepPlacement]
    ) -> Deployment:
        """Records where a RUNNING deployment's canary and shadow steps run (after a resume)."""

        def record(session: Session) -> Deployment:
            row = _deployment_row(session, workspace_id, name)
            plan = _variants_of(row.variants, self.secrets)[0]
            row.variants = _variants_json(plan, canary, shadow, self.secrets)
            session.flush()
            _routes_changed(session)
            return self._deployment(row)

        return self._write(record)

    def begin_change(
        self, workspace_id: int, name: str, plan: Plan, *, actor: str, reason: str
    ) -> Deployment:
        """Records revision n+1 PENDING for a RUNNING deployment with no change pending; the deployment
        keeps serving its revision. FailedPrecondition otherwise."""

        def begin(session: Session) -> Deployment:
            row = _deployment_row(session, workspace_id, name, lock=True)
            if row.status != DeploymentStatus.RUNNING.value:
                raise FailedPrecondition(f"deployment {name!r} is {row.status}, not running")
            if row.pending_revision:
                raise FailedPrecondition(
                    f"deployment {name!r} has revision {row.pending_revision} pending; wait for it to finish"
                )
            latest = session.scalar(
                select(func.max(DeploymentRevisionRow.revision)).where(
                    DeploymentRevisionRow.deployment_id == row.id
                )
            )
            number = max(int(latest or 0), row.revision) + 1
            session.add(_revision_row(row.id, number, plan, actor, reason))
            row.pending_revision = number
            row.status_reason = f"revision {number} pending: loading and warming"
            session.flush()
            return self._deployment(row)

        return self._write(begin)

    def finish_change(
        self,
        workspace_id: int,
        name: str,
        revision: int,
        plan: Plan,
        placements: Sequence[StepPlacement],
        canary: Sequence[StepPlacement],
        shadow: Sequence[StepPlacement],
    ) -> Deployment:
        """The pending `revision` went live: the deployment now serves `plan` where `placements` say."""

        def finish(session: Session) -> Deployment:
            row = _deployment_row(session, workspace_id, name, lock=True)
            pending = session.get(DeploymentRevisionRow, (row.id, revision))
            if pending is not None:
                pending.status = RevisionStatus.LIVE.value
            if [(s.model_id, s.version) for s in row.steps] != [(s.model_id, s.version) for s in plan.steps]:
                row.steps.clear()
                session.flush()  # the old rows go before new ones take their (deployment, position) keys
                row.steps.extend(
                    DeploymentStepRow(position=i, model_id=s.model_id, version=s.version)
                    for i, s in enumerate(plan.steps)
                )
            for step, placed in zip(row.steps, placements, strict=True):
                step.in_front_door = placed.in_front_door
                step.location = placed.location
                step.model_key = placed.model_key
                step.runtime_secret = self.secrets.encrypt(placed.secret)
            row.variants = _variants_json(plan, canary, shadow, self.secrets)
            row.revision = revision
            row.pending_revision = 0
            row.status_reason = ""
            session.flush()
            _routes_changed(session)
            return self._deployment(row)

        return self._write(finish)

    def fail_change(self, workspace_id: int, name: str, revision: int, reason: str) -> Deployment:
        """The pending `revision` could not go live; the deployment keeps serving the one before."""

        def fail(session: Session) -> Deployment:
            row = _deployment_row(session, workspace_id, name, lock=True)
            pending = session.get(DeploymentRevisionRow, (row.id, revision))
            if pending is not None:
                pending.status = RevisionStatus.FAILED.value
                pending.status_reason = reason
            if row.pending_revision == revision:
                row.pending_revision = 0
                row.status_reason = f"revision {revision} failed, revision {row.revision} serves: {reason}"
            session.flush()
            return self._deployment(row)

        return self._write(fail)

    def list_revisions(
        self, workspace_id: int, name: str, limit: int | None = None, after: int = 0
    ) -> list[Revision]:
        """A deployment's revisions by number, after `after`."""
        with self._read() as session:
            row = _deployment_row(session, workspace_id, name)
            query = (
                select(DeploymentRevisionRow)
                .where(DeploymentRevisionRow.deployment_id == row.id, DeploymentRevisionRow.revision > after)
                .order_by(DeploymentRevisionRow.revision)
                .limit(limit)
            )
            return [_revision(r) for r in session.scalars(query)]

    def delete_deployment(self, workspace_id: int, name: str) -> None:
        def delete(session: Session) -> None:
            session.delete(_deployment_row(session, workspace_id, name))
            _routes_changed(session)

        self._write(delete)

    # -- secrets at rest

    def encrypt_clear_tokens(self) -> int:
        """Encrypts registry tokens stored in clear (by a server from before migration 0005); how many."""

        def encrypt(session: Session) -> int:
            rows = [
                r
                for r in session.scalars(select(RegistryRow))
                if r.token and not r.token.startswith("fernet:")
            ]
            for row in rows:
                row.token = self.secrets.encrypt(row.token)
            return len(rows)

        return self._write(encrypt)

    def rotate_secrets(self, new: Secrets) -> int:
        """Re-encrypts every stored secret with `new`'s first key, in one transaction; how many. Values
        are read with this store's keys (or `new`'s: a rotation that was interrupted is simply re-run)."""
        reader = Secrets([*new.keys, *self.secrets.keys])

        def rotate(session: Session) -> int:
            count = 0
            for registry in session.scalars(select(RegistryRow)):
                if registry.token:
                    registry.token = new.encrypt(reader.decrypt(registry.token))
                    count += 1
            for step in session.scalars(select(DeploymentStepRow)):
                if step.runtime_secret:
                    step.runtime_secret = new.encrypt(reader.decrypt(step.runtime_secret))
                    count += 1
            for deployment in session.scalars(select(DeploymentRow).where(DeploymentRow.variants != "")):
                plan, canary, shadow = _variants_of(deployment.variants, reader)
                deployment.variants = _variants_json(plan, canary, shadow, new)
                count += len(canary) + len(shadow)
            return count

        count = self._write(rotate)
        self.secrets = new
        return count

    # -- instances and routes

    def claim_unowned(self) -> None:
        """Makes this store's owner the owner of versions and deployments that have none (rows from before
        ownership existed). One conditional UPDATE each: of several instances starting at once, exactly one
        gets each row."""

        def claim(session: Session) -> None:
            for table in (ModelVersionRow, DeploymentRow):
                session.execute(update(table).where(table.owner == "").values(owner=self.owner))

        if self.owner:
            self._write(claim)

    def route_version(self) -> int:
        """A counter that goes up with every change of any deployment (front doors poll it)."""
        with self._read() as session:
            return int(session.scalar(select(RouteStateRow.version).where(RouteStateRow.id == 1)) or 0)

    # -- alias follows

    def put_follow(self, follow: Follow) -> Follow:
        """Starts (or replaces) the follow of a deployment."""

        def put(session: Session) -> Follow:
            if session.get(DeploymentRow, follow.deployment_id) is None:
                raise NotFound(f"deployment {follow.deployment_id} does not exist")
            row = session.get(FollowRow, follow.deployment_id)
            if row is None:
                row = FollowRow(deployment_id=follow.deployment_id)
            row.registry_id = follow.registry_id
            row.uri = follow.uri
            row.model_name = follow.model_name
            row.conversion = _conversion_json(follow.conversion)
            row.followed_version = follow.followed_version
            row.status_reason = follow.status_reason
            row.checked_at = follow.checked_at
            session.add(row)
            session.flush()
            return _follow(row)

        return self._write(put)

    def update_follow(
        self, deployment_id: int, *, followed_version: str | None = None, status_reason: str | None = None
    ) -> Follow:
        def update(session: Session) -> Follow:
            row = session.get(FollowRow, deployment_id)
            if row is None:
                raise NotFound(f"deployment {deployment_id} follows no alias")
            if followed_version is not None:
                row.followed_version = followed_version
            if status_reason is not None:
                row.status_reason = status_reason
            row.checked_at = utc_now()
            session.flush()
            return _follow(row)

        return self._write(update)

    def get_follow(self, deployment_id: int) -> Follow | None:
        with self._read() as session:
            row = session.get(FollowRow, deployment_id)
            return None if row is None else _follow(row)

    def delete_follow(self, deployment_id: int) -> bool:
        """Stops the follow of a deployment; False when it followed nothing."""

        def delete(session: Session) -> bool:
            row = session.get(FollowRow, deployment_id)
            if row is not None:
                session.delete(row)
            return row is not None

        return self._write(delete)

    def list_follows(self) -> list[Follow]:
        with self._read() as session:
            return [_follow(row) for row in session.scalars(select(FollowRow))]

    # -- rows to records that hold secrets

    def _registry(self, row: RegistryRow) -> Registry:
        return Registry(
            id=row.id,
            name=row.name,
            url=row.url,
            token=self.secrets.decrypt(row.token),
            created_at=row.created_at,
            updated_at=row.updated_at,
            workspace_ids=tuple(sorted(link.workspace_id for link in row.links)),
        )

    def _deployment(self, row: DeploymentRow) -> Deployment:
        plan, canary, shadow = _variants_of(row.variants, self.secrets)
        running = row.status == DeploymentStatus.RUNNING
        return Deployment(
            id=row.id,
            name=row.name,
            workspace_id=row.workspace_id,
            status=DeploymentStatus(row.status),
            status_reason=row.status_reason,
            steps=tuple(DeploymentStep(model_id=s.model_id, version=s.version) for s in row.steps),
            created_at=row.created_at,
            failed_by_fault=row.failed_by_fault,
            owner=row.owner,
            placements=tuple(
                StepPlacement(
                    s.in_front_door, s.location, s.model_key, self.secrets.decrypt(s.runtime_secret)
                )
                for s in row.steps
            )
            if running
            else (),
            revision=row.revision,
            pending_revision=row.pending_revision,
            canary=plan.canary,
            canary_percent=plan.canary_percent,
            shadow=plan.shadow,
            canary_placements=canary if running else (),
            shadow_placements=shadow if running else (),
        )

    # -- plumbing

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Runs `work` in one write transaction, again if a concurrent writer won a unique-constraint race."""
        attempt = 1
        while True:
            calls.check("writing")
            try:
                with self._sessions.begin() as session:
                    session.connection(execution_options={WRITE_OPTION: True})
                    result = work(session)
                    # The one check that a write's client is still there: if not, leaving the block
                    # rolls the transaction back, so a caller that gave up never finds it committed.
                    calls.check("committing")
                    return result
            except IntegrityError:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                attempt += 1
            except OperationalError as exc:
                if not _is_lock_wait(exc):
                    raise
                log.warning("metadata write gave up waiting for the database lock: %s", exc.orig)
                raise Unavailable(BUSY) from exc

    def _upgrade_schema(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})")
                config.attributes["connection"] = connection
                command.upgrade(config, "head")


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    if not parsed.database or parsed.database == ":memory:":
        raise InvalidArgument(f"metadata database {url!r}: in-memory SQLite is not supported, use a file")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}, pool_size=8
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself, so writers can take the write lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",  # readers never block the writer, nor it them
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}",
        "synchronous=NORMAL",  # safe with WAL; fsync at checkpoints only
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _begin_sqlite_transaction(connection: Any) -> None:
    # A deferred transaction that reads then writes fails (SQLITE_BUSY_SNAPSHOT) if another writer got in
    # between; IMMEDIATE makes writers queue on the busy timeout instead.
    write = connection.get_execution_options().get(WRITE_OPTION, False)
    if write:
        connection.exec_driver_sql(f"PRAGMA busy_timeout={int(_lock_wait_s() * 1000)}")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _lock_wait_s() -> float:
    left = calls.remaining()
    if left is None:
        return SQLITE_BUSY_TIMEOUT_S
    return max(0.0, min(SQLITE_BUSY_TIMEOUT_S, left - LOCK_WAIT_MARGIN_S))


def _is_lock_wait(exc: OperationalError) -> bool:
    # SQLite's SQLITE_BUSY / SQLITE_LOCKED; PostgreSQL's lock_timeout (55P03) when an operator sets one.
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text or "lock timeout" in text


# -- row lookups that raise NotFound with the missing thing named


def _workspace_row(session: Session, workspace_id: int) -> WorkspaceRow:
    row = session.get(WorkspaceRow, workspace_id)
    if row is None:
        raise NotFound(f"workspace {workspace_id} does not exist")
    return row


def _registry_row(session: Session, registry_id: str) -> RegistryRow:
    row = session.get(RegistryRow, registry_id)
    if row is None:
        raise NotFound(f"registry {registry_id!r} does not exist")
    return row


def _model_row(session: Session, model_id: int) -> ModelRow:
    row = session.get(ModelRow, model_id)
    if row is None:
        raise NotFound(f"model {model_id} does not exist")
    return row


def _version_row(session: Session, model_id: int, version: int) -> tuple[ModelVersionRow, str]:
    model = _model_row(session, model_id)
    query = select(ModelVersionRow).where(ModelVersionRow.model_id == model_id)
    if version > 0:
        query = query.where(ModelVersionRow.version == version)
    row = session.scalars(query.order_by(ModelVersionRow.version.desc()).limit(1)).one_or_none()
    if row is None:
        raise NotFound(
            f"model {model_id} ({model.name}) has no version {version}"
            if version > 0
            else f"model {model_id} ({model.name}) has no versions"
        )
    return row, model.name


def _deployment_row(session: Session, workspace_id: int, name: str, *, lock: bool = False) -> DeploymentRow:
    query = select(DeploymentRow).where(
        DeploymentRow.workspace_id == workspace_id, DeploymentRow.name == name
    )
    row = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise NotFound(f"deployment {name!r} does not exist")
    return row


# -- rows to records


def _workspace(row: WorkspaceRow) -> Workspace:
    return Workspace(id=row.id, name=row.name, created_at=row.created_at)


def _model(row: ModelRow) -> Model:
    return Model(
        id=row.id,
        name=row.name,
        workspace_id=row.workspace_id,
        visibility=row.visibility,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _version(row: ModelVersionRow, model_name: str) -> ModelVersion:
    return ModelVersion(
        model_id=row.model_id,
        model_name=model_name,
        version=row.version,
        framework=row.framework,
        runtime=row.runtime,
        native=row.native,
        status=ModelStatus(row.status),
        status_reason=row.status_reason,
        conversion_note=row.conversion_note,
        input_schema=row.input_schema,
        output_schema=row.output_schema,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        original_sha256=row.original_sha256,
        source=row.source,
        conversion=Conversion(
            framework=row.conversion_framework,
            python_version=row.conversion_python_version,
            requirements=tuple(row.conversion_requirements),
            input_schema=row.conversion_input_schema,
            output_schema=row.conversion_output_schema,
            options=dict(row.conversion_options),
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner=row.owner,
        origin=MlflowOrigin.from_json(row.origin),
        converter=row.converter,
    )


def _conversion_json(c: Conversion) -> dict[str, Any]:
    return {
        "framework": c.framework,
        "python_version": c.python_version,
        "requirements": list(c.requirements),
        "input_schema": c.input_schema.hex(),
        "output_schema": c.output_schema.hex(),
        "options": dict(c.options),
    }


def _follow(row: FollowRow) -> Follow:
    c = row.conversion
    conversion = Conversion(
        framework=str(c.get("framework", "")),
        python_version=str(c.get("python_version", "")),
        requirements=tuple(c.get("requirements") or ()),
        input_schema=bytes.fromhex(c.get("input_schema", "")),
        output_schema=bytes.fromhex(c.get("output_schema", "")),
        options=dict(c.get("options") or {}),
    )
    return Follow(
        row.deployment_id,
        row.registry_id,
        row.uri,
        row.model_name,
        conversion,
        row.followed_version,
        row.status_reason,
        row.checked_at,
    )


def _steps_json(steps: Sequence[DeploymentStep]) -> list[list[int]]:
    return [[s.model_id, s.version] for s in steps]


def _steps_of(value: Any) -> tuple[DeploymentStep, ...]:
    return tuple(DeploymentStep(int(m), int(v)) for m, v in value or ())


def _placements_json(placements: Sequence[StepPlacement], secrets: Secrets) -> list[list[Any]]:
    return [[p.in_front_door, p.location, p.model_key, secrets.encrypt(p.secret)] for p in placements]


def _placements_of(value: Any, secrets: Secrets) -> tuple[StepPlacement, ...]:
    # [in_front_door, location, model_key, encrypted runtime secret]; rows from before auth have no secret
    return tuple(
        StepPlacement(bool(p[0]), str(p[1]), str(p[2]), secrets.decrypt(str(p[3])) if len(p) > 3 else "")
        for p in value or ()
    )


def _variants_json(
    plan: Plan, canary: Sequence[StepPlacement], shadow: Sequence[StepPlacement], secrets: Secrets
) -> str:
    """A deployment's `variants` column: its split and shadow (steps of the plan are its step rows); the
    runtime servers' secrets in it are encrypted as the step rows' are."""
    if not plan.canary and not plan.shadow:
        return ""
    return json.dumps(
        {
            "canary": _steps_json(plan.canary),
            "canary_percent": plan.canary_percent,
            "shadow": _steps_json(plan.shadow),
            "canary_placements": _placements_json(canary, secrets),
            "shadow_placements": _placements_json(shadow, secrets),
        }
    )


def _variants_of(
    text: str, secrets: Secrets
) -> tuple[Plan, tuple[StepPlacement, ...], tuple[StepPlacement, ...]]:
    """(plan without steps, canary placements, shadow placements) from a `variants` column."""
    if not text:
        return Plan(()), (), ()
    value = json.loads(text)
    plan = Plan((), _steps_of(value["canary"]), int(value["canary_percent"]), _steps_of(value["shadow"]))
    canary = _placements_of(value["canary_placements"], secrets)
    return plan, canary, _placements_of(value["shadow_placements"], secrets)


def _revision_row(
    deployment_id: int, number: int, plan: Plan, actor: str, reason: str
) -> DeploymentRevisionRow:
    return DeploymentRevisionRow(
        deployment_id=deployment_id,
        revision=number,
        status=RevisionStatus.PENDING.value,
        status_reason="",
        actor=actor,
        reason=reason,
        plan=json.dumps(
            {
                "steps": _steps_json(plan.steps),
                "canary": _steps_json(plan.canary),
                "canary_percent": plan.canary_percent,
                "shadow": _steps_json(plan.shadow),
            }
        ),
        created_at=utc_now(),
    )


def _revision(row: DeploymentRevisionRow) -> Revision:
    plan = json.loads(row.plan)
    return Revision(
        deployment_id=row.deployment_id,
        revision=row.revision,
        status=RevisionStatus(row.status),
        status_reason=row.status_reason,
        actor=row.actor,
        reason=row.reason,
        plan=Plan(
            _steps_of(plan["steps"]),
            _steps_of(plan["canary"]),
            int(plan["canary_percent"]),
            _steps_of(plan["shadow"]),
        ),
        created_at=row.created_at,
    )


def _routes_changed(session: Session) -> None:
    # In the writer's transaction: a front door that sees the new counter also sees the change.
    session.execute(
        update(RouteStateRow).where(RouteStateRow.id == 1).values(version=RouteStateRow.version + 1)
    )
