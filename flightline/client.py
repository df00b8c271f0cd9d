"""The Python client of Flightline: both planes behind one object.

    import flightline

    fl = flightline.connect("127.0.0.1:50051")            # or FLIGHTLINE_SERVER / FLIGHTLINE_TOKEN
    ws = fl.workspaces.create("fraud-team")
    version = fl.upload("model.onnx", name="fraud", workspace=ws, framework="onnx")
    print(version.status)                                  # ready (flightline.ModelStatus.READY)
    dep = fl.deploy("fraud", version, workspace=ws)
    print(dep.infer({"inputs": [[0.1] * 29]}))            # a pyarrow.Table over Arrow Flight

Listings are iterators that fetch the next page when needed (AIP-158). Uploads and deploys wait for a
final state by following the server's Watch streams unless `wait=False`. Every failure is a typed
`flightline.errors.FlightlineError`, from gRPC and from Flight alike.

The returned objects are in `flightline.resources`, the wire-level helpers (paging, waiting, uploads,
Flight exchanges) in `flightline.transport`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from flightline import errors
from flightline.resources import (
    AliasFollow,
    AnsweredBy,
    Columns,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    Framework,
    Member,
    Model,
    ModelStatus,
    ModelVersion,
    RegisteredModel,
    RegisteredModelVersion,
    Registry,
    RegistryArtifact,
    Revision,
    RevisionStatus,
    ShadowStats,
    Token,
    User,
    Workspace,
)
from flightline.transport import (
    DEFAULT_SERVER,
    MODEL_DONE,
    Tls,
    deployment_settled,
    every_page,
    follow,
    open_channel,
    upload_requests,
)
from flightline.v1 import (
    access_pb2,
    access_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

__all__ = [
    "DEFAULT_SERVER",
    "AliasFollow",
    "AnsweredBy",
    "Columns",
    "Deployment",
    "DeploymentStatus",
    "DeploymentStep",
    "Flightline",
    "Framework",
    "Member",
    "Model",
    "ModelStatus",
    "ModelVersion",
    "RegisteredModel",
    "RegisteredModelVersion",
    "Registry",
    "RegistryArtifact",
    "Revision",
    "RevisionStatus",
    "ShadowStats",
    "Token",
    "User",
    "Workspace",
    "connect",
]


WorkspaceRef = int | str | Workspace
ModelRef = int | str | Model | ModelVersion


class _Part:
    def __init__(self, client: Flightline) -> None:
        self._c = client


class Workspaces(_Part):
    """`fl.workspaces`: create, list and get workspaces."""

    def create(self, name: str) -> Workspace:
        """Creates a workspace (names are DNS-compliant and unique)."""
        return Workspace.from_proto(
            self._c._call(
                self._c._stubs.workspaces.CreateWorkspace, workspace_pb2.CreateWorkspaceRequest(name=name)
            )
        )

    def list(self, *, page_size: int = 0) -> Iterator[Workspace]:
        """Every workspace, fetched a page at a time."""
        request = workspace_pb2.ListWorkspacesRequest(page_size=page_size)
        for m in self._c._pages(self._c._stubs.workspaces.ListWorkspaces, request, "workspaces"):
            yield Workspace.from_proto(m)

    def get(self, workspace: WorkspaceRef) -> Workspace:
        """A workspace by id or by name."""
        if isinstance(workspace, Workspace):
            workspace = workspace.id
        if isinstance(workspace, str):
            found = next((w for w in self.list() if w.name == workspace), None)
            if found is None:
                raise errors.NotFoundError(f"workspace {workspace!r} does not exist")
            return found
        request = workspace_pb2.GetWorkspaceRequest(workspace_id=workspace)
        return Workspace.from_proto(self._c._call(self._c._stubs.workspaces.GetWorkspace, request))


class Registries(_Part):
    """`fl.registries`: connect MLflow registries and browse their models."""

    def create(self, name: str, url: str, *, workspace: WorkspaceRef, token: str | None = None) -> Registry:
        """Connects a registry (MLflow tracking URL or Databricks workspace URL) to a workspace."""
        request = registry_pb2.CreateRegistryRequest(
            workspace_id=self._c._workspace_id(workspace), name=name, url=url, token=token or ""
        )
        return Registry.from_proto(self._c._call(self._c._stubs.registries.CreateRegistry, request))

    def attach(self, registry_id: str, *, workspace: WorkspaceRef) -> None:
        """Makes a registry usable from one more workspace."""
        request = registry_pb2.AttachRegistryRequest(
            registry_id=registry_id, workspace_id=self._c._workspace_id(workspace)
        )
        self._c._call(self._c._stubs.registries.AttachRegistry, request)

    def detach(self, registry_id: str, *, workspace: WorkspaceRef) -> None:
        """Removes a registry from a workspace."""
        request = registry_pb2.DetachRegistryRequest(
            registry_id=registry_id, workspace_id=self._c._workspace_id(workspace)
        )
        self._c._call(self._c._stubs.registries.DetachRegistry, request)

    def get(self, registry_id: str) -> Registry:
        """A registry by id."""
        request = registry_pb2.GetRegistryRequest(registry_id=registry_id)
        return Registry.from_proto(self._c._call(self._c._stubs.registries.GetRegistry, request))

    def list(self, *, workspace: WorkspaceRef, page_size: int = 0) -> Iterator[Registry]:
        """The registries attached to a workspace."""
        request = registry_pb2.ListRegistriesRequest(
            workspace_id=self._c._workspace_id(workspace), page_size=page_size
        )
        for m in self._c._pages(self._c._stubs.registries.ListRegistries, request, "registries"):
            yield Registry.from_proto(m)

    def models(self, registry_id: str, *, page_size: int = 0) -> Iterator[RegisteredModel]:
        """The registered models of a registry."""
        request = registry_pb2.ListRegistryModelsRequest(registry_id=registry_id, page_size=page_size)
        for m in self._c._pages(self._c._stubs.registries.ListRegistryModels, request, "registered_models"):
            yield RegisteredModel.from_proto(m)

    def versions(
        self, registry_id: str, name: str, *, page_size: int = 0
    ) -> Iterator[RegisteredModelVersion]:
        """The versions of a registered model."""
        request = registry_pb2.ListRegistryModelVersionsRequest(
            registry_id=registry_id, name=name, page_size=page_size
        )
        for m in self._c._pages(self._c._stubs.registries.ListRegistryModelVersions, request, "versions"):
            yield RegisteredModelVersion.from_proto(m)

    def artifacts(
        self, registry_id: str, name: str, version: str, *, page_size: int = 0
    ) -> Iterator[RegistryArtifact]:
        """The files of a registered model version."""
        request = registry_pb2.ListModelVersionArtifactsRequest(
            registry_id=registry_id, name=name, version=version, page_size=page_size
        )
        for m in self._c._pages(self._c._stubs.registries.ListModelVersionArtifacts, request, "artifacts"):
            yield RegistryArtifact.from_proto(m)


class Models(_Part):
    """`fl.models`: the uploaded models of a workspace and their versions."""

    def list(self, *, workspace: WorkspaceRef, page_size: int = 0) -> Iterator[Model]:
        """The workspace's models and every public one."""
        request = model_pb2.ListModelsRequest(
            workspace_id=self._c._workspace_id(workspace), page_size=page_size
        )
        for m in self._c._pages(self._c._stubs.models.ListModels, request, "models"):
            yield Model.from_proto(m)

    def get(self, model: int | str | Model, *, workspace: WorkspaceRef | None = None) -> Model:
        """A model by id, or by name in `workspace`."""
        if isinstance(model, Model):
            model = model.id
        if isinstance(model, str):
            if workspace is None:
                raise errors.InvalidArgumentError(f"model {model!r}: a model name needs a workspace")
            found = next((m for m in self.list(workspace=workspace) if m.name == model), None)
            if found is None:
                raise errors.NotFoundError(f"model {model!r} does not exist in workspace {workspace}")
            return found
        request = model_pb2.GetModelRequest(model_id=model)
        return Model.from_proto(self._c._call(self._c._stubs.models.GetModel, request))

    def version(
        self, model: int | str | Model, version: int | None = None, *, workspace: WorkspaceRef | None = None
    ) -> ModelVersion:
        """One version of a model (None: the latest)."""
        model_id = self.get(model, workspace=workspace).id if not isinstance(model, int) else model
        request = model_pb2.GetModelVersionRequest(model_id=model_id, version=version)
        return ModelVersion.from_proto(self._c._call(self._c._stubs.models.GetModelVersion, request))

    def versions(
        self, model: int | str | Model, *, workspace: WorkspaceRef | None = None, page_size: int = 0
    ) -> Iterator[ModelVersion]:
        """Every version of a model, oldest first."""
        model_id = self.get(model, workspace=workspace).id if not isinstance(model, int) else model
        request = model_pb2.ListModelVersionsRequest(model_id=model_id, page_size=page_size)
        for m in self._c._pages(self._c._stubs.models.ListModelVersions, request, "versions"):
            yield ModelVersion.from_proto(m)


class Deployments(_Part):
    """`fl.deployments`: list and get deployments (create them with `fl.deploy`)."""

    def list(self, *, workspace: WorkspaceRef | None = None, page_size: int = 0) -> Iterator[Deployment]:
        """Every deployment, or a workspace's."""
        request = deployment_pb2.ListDeploymentsRequest(page_size=page_size)
        if workspace is not None:
            request.workspace_id = self._c._workspace_id(workspace)
        for m in self._c._pages(self._c._stubs.deployments.ListDeployments, request, "deployments"):
            yield Deployment.from_proto(m, self._c)

    def get(self, name: str, *, workspace: WorkspaceRef | None = None) -> Deployment:
        """A deployment by name: of `workspace`, or the one of that name you can see."""
        request = deployment_pb2.GetDeploymentRequest(
            name=name, workspace_id=self._c._optional_workspace(workspace)
        )
        return Deployment.from_proto(
            self._c._call(self._c._stubs.deployments.GetDeployment, request), self._c
        )

    def history(
        self, name: str, *, workspace: WorkspaceRef | None = None, page_size: int = 0
    ) -> Iterator[Revision]:
        """A deployment's revisions (deploy, updates, split and shadow changes), oldest first."""
        request = deployment_pb2.ListDeploymentRevisionsRequest(
            workspace_id=self._c._deployment_workspace(name, workspace), name=name, page_size=page_size
        )
        for m in self._c._pages(self._c._stubs.deployments.ListDeploymentRevisions, request, "revisions"):
            yield Revision.from_proto(m)


class _Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(channel)
        self.registries = registry_pb2_grpc.RegistryServiceStub(channel)
        self.models = model_pb2_grpc.ModelServiceStub(channel)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(channel)
        self.access = access_pb2_grpc.AccessServiceStub(channel)


# gRPC's own words when nothing answers at the address; said plainly instead.
_UNREACHABLE = ("failed to connect to all addresses", "connection refused", "dns resolution failed")


class Flightline:
    """A connection to a Flightline server (use `flightline.connect`). Usable as a context manager;
    `close()` closes the gRPC channel and the Flight connections."""

    def __init__(
        self, server: str, *, token: str | None = None, flight: str | None = None, tls: Tls | None = None
    ) -> None:
        self.server = server
        self.flight_location = flight
        self._tls = tls
        self._channel = open_channel(server, token, tls)
        self._stubs = _Stubs(self._channel)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._flight_options = _flight_call_options(headers)  # (`flight` is the parameter here)
        self._flights: dict[str, Any] = {}
        self.workspaces = Workspaces(self)
        self.registries = Registries(self)
        self.models = Models(self)
        self.deployments = Deployments(self)

    # --- plumbing ---------------------------------------------------------------------------------------

    def _error(self, error: grpc.RpcError) -> errors.FlightlineError:
        typed = errors.from_grpc(error)
        if isinstance(typed, errors.UnavailableError) and any(
            words in typed.details.lower() for words in _UNREACHABLE
        ):
            return errors.UnavailableError(f"cannot reach the server at {self.server}")
        return typed

    def _call(self, rpc: Callable[..., Any], request: Any, **kwargs: Any) -> Any:
        try:
            return rpc(request, **kwargs)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _pages(self, rpc: Callable[..., Any], request: Any, name: str) -> Iterator[Any]:
        with self._grpc_errors():
            yield from every_page(rpc, request, name)

    @contextlib.contextmanager
    def _grpc_errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as error:
            raise self._error(error) from None

    @contextlib.contextmanager
    def _flight_errors(self) -> Iterator[None]:
        try:
            yield
        except pa.ArrowException as error:
            typed = errors.from_flight(error)
            if typed is None:
                raise
            if isinstance(typed, errors.UnavailableError) and any(
                words in typed.details.lower() for words in _UNREACHABLE
            ):
                typed = errors.UnavailableError("cannot reach the Flight server")
            raise typed from None

    def _flight(self, location: str) -> flight.FlightClient:
        where = self.flight_location or location
        if not where:
            raise errors.FailedPreconditionError("the deployment has no Flight location (is it running?)")
        conn = self._flights.get(where)
        if conn is None:
            options = self._tls.flight_options() if self._tls is not None else {}
            conn = self._flights[where] = flight.connect(where, **options)
        return conn

    def _workspace_id(self, workspace: WorkspaceRef) -> int:
        if isinstance(workspace, Workspace):
            return workspace.id
        if isinstance(workspace, int):
            return workspace
        if workspace.isdigit():
            return int(workspace)
        return self.workspaces.get(workspace).id

    def _optional_workspace(self, workspace: WorkspaceRef | None) -> int:
        """A workspace's id, or 0 ("the one deployment of that name I can see") for None."""
        return 0 if workspace is None else self._workspace_id(workspace)

    # --- access control (AccessService) ---------------------------------------------------------------

    def whoami(self) -> access_pb2.WhoAmIResponse:
        """The caller: its user, its memberships and the id of the token in use."""
        found: access_pb2.WhoAmIResponse = self._call(self._stubs.access.WhoAmI, access_pb2.WhoAmIRequest())
        return found

    def create_user(self, name: str, *, admin: bool = False) -> User:
        """A new user or service account (platform admins only)."""
        request = access_pb2.CreateUserRequest(name=name, admin=admin)
        return User.from_proto(self._call(self._stubs.access.CreateUser, request))

    def users(self, *, page_size: int = 0) -> Iterator[User]:
        """Every user (platform admins only), fetched page by page."""
        request = access_pb2.ListUsersRequest(page_size=page_size)
        return (User.from_proto(u) for u in self._pages(self._stubs.access.ListUsers, request, "users"))

    def tokens(self, *, user_id: int = 0) -> list[Token]:
        """Your tokens, or (platform admins) `user_id`'s: revoked and expired ones included."""
        found = self._call(self._stubs.access.ListTokens, access_pb2.ListTokensRequest(user_id=user_id))
        return [Token.from_proto(t) for t in found.tokens]

    def members(self, workspace: WorkspaceRef, *, page_size: int = 0) -> Iterator[Member]:
        """A workspace's members and their roles, fetched page by page."""
        request = access_pb2.ListMembersRequest(
            workspace_id=self._workspace_id(workspace), page_size=page_size
        )
        return (Member.from_proto(m) for m in self._pages(self._stubs.access.ListMembers, request, "members"))

    def remove_member(self, workspace: WorkspaceRef, user_id: int) -> None:
        """Takes a user's role in `workspace` away (workspace admins)."""
        request = access_pb2.RemoveMemberRequest(workspace_id=self._workspace_id(workspace), user_id=user_id)
        self._call(self._stubs.access.RemoveMember, request)

    def create_token(self, *, user_id: int = 0, name: str = "", ttl_seconds: int = 0) -> tuple[str, str]:
        """(token id, token): a new API token for yourself or (platform admins) `user_id`. The token is
        shown this once; the server keeps only a salted hash."""
        request = access_pb2.CreateTokenRequest(user_id=user_id, name=name, ttl_seconds=ttl_seconds)
        made = self._call(self._stubs.access.CreateToken, request)
        return str(made.token.id), str(made.secret)

    def revoke_token(self, token_id: str) -> None:
        self._call(self._stubs.access.RevokeToken, access_pb2.RevokeTokenRequest(token_id=token_id))

    def set_member(self, workspace: WorkspaceRef, user_id: int, role: str) -> None:
        """Gives `user_id` the role "viewer", "editor" or "admin" in `workspace` (workspace admins)."""
        roles = {
            "viewer": access_pb2.ROLE_VIEWER,
            "editor": access_pb2.ROLE_EDITOR,
            "admin": access_pb2.ROLE_ADMIN,
        }
        if role not in roles:
            raise errors.InvalidArgumentError(f"role must be one of {', '.join(roles)}, got {role!r}")
        request = access_pb2.SetMemberRequest(
            workspace_id=self._workspace_id(workspace), user_id=user_id, role=roles[role]
        )
        self._call(self._stubs.access.SetMember, request)

    def close(self) -> None:
        """Closes the gRPC channel and every Flight connection."""
        for conn in self._flights.values():
            conn.close()
        self._flights.clear()
        self._channel.close()

    def __enter__(self) -> Flightline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the verbs --------------------------------------------------------------------------------------

    def frameworks(self) -> list[Framework]:
        """The framework catalog: what can be uploaded and whether a runtime serves it today."""
        request = model_pb2.ListFrameworksRequest()
        return [
            Framework.from_proto(m)
            for m in self._pages(self._stubs.models.ListFrameworks, request, "frameworks")
        ]

    def upload(
        self,
        path_or_uri: str | os.PathLike[str],
        *,
        name: str,
        workspace: WorkspaceRef,
        framework: str = "",
        registry: str | None = None,
        input_schema: pa.Schema | None = None,
        output_schema: pa.Schema | None = None,
        options: Mapping[str, str] | None = None,
        public: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
        on_status: Callable[[ModelVersion], None] | None = None,
    ) -> ModelVersion:
        """Uploads a model and returns its new version: READY or ERROR with `wait` (the default; the
        server's preparation, e.g. conversion to ONNX, is followed until it ends), else as stored
        (PENDING_CONVERSION).

        `path_or_uri` is a local file (streamed with its size declared; `progress` sees the bytes sent),
        or with `registry=` (a registry id) a path of that registry: `models:/<name>/<version>`,
        `models:/<name>@<alias>` (pinned to the version it names now), `models:/m-<id>` or an artifact
        path from `fl.registries.artifacts(...)`. `framework` may stay empty for an MLflow model: its
        flavor decides (the version's `mlflow` says which); a file upload needs one."""
        conversion = model_pb2.Conversion(
            framework=framework,
            input_schema=input_schema.serialize().to_pybytes() if input_schema is not None else b"",
            output_schema=output_schema.serialize().to_pybytes() if output_schema is not None else b"",
            options=dict(options or {}),
        )
        visibility = model_pb2.VISIBILITY_PUBLIC if public else model_pb2.VISIBILITY_PRIVATE
        workspace_id = self._workspace_id(workspace)
        if registry is not None:
            request = model_pb2.UploadFromRegistryRequest(
                registry_id=registry,
                name=name,
                path=str(path_or_uri),
                visibility=visibility,
                workspace_id=workspace_id,
                conversion=conversion,
            )
            response = self._call(self._stubs.models.UploadFromRegistry, request, timeout=timeout)
        else:
            if str(path_or_uri).startswith(("models:/", "runs:/", "mlflow-artifacts:/", "dbfs:/")):
                raise errors.InvalidArgumentError(
                    f"{path_or_uri}: a registry path needs registry=<registry id>"
                )
            path = Path(path_or_uri)
            if not path.is_file():
                raise errors.InvalidArgumentError(f"{path}: no such file")
            meta = model_pb2.UploadMetadata(
                name=name, workspace_id=workspace_id, visibility=visibility, conversion=conversion
            )
            requests = upload_requests(path, meta, progress)
            response = self._call(self._stubs.models.UploadModel, requests, timeout=timeout)
        if not wait:
            return ModelVersion.from_proto(response.version)
        return self.wait_version(
            response.model_id, response.version.version, on_status=on_status, timeout=timeout
        )

    def wait_version(
        self,
        model_id: int,
        version: int | None = None,
        *,
        on_status: Callable[[ModelVersion], None] | None = None,
        timeout: float | None = None,
    ) -> ModelVersion:
        """Waits until a model version (None: the latest) is READY or ERROR and returns it."""
        request = model_pb2.WatchModelVersionRequest(model_id=model_id, version=version)
        show = None if on_status is None else (lambda m: on_status(ModelVersion.from_proto(m)))
        with self._grpc_errors():
            found = follow(
                lambda left: self._stubs.models.WatchModelVersion(request, timeout=left),
                MODEL_DONE,
                show,
                timeout,
            )
        return ModelVersion.from_proto(found)

    def deploy(
        self,
        name: str,
        *models_or_versions: ModelRef,
        workspace: WorkspaceRef,
        wait: bool = True,
        timeout: float | None = None,
        on_status: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Deploys a pipeline of models as `name` and returns it RUNNING or FAILED with `wait` (the
        default), else DEPLOYING. Each step is a model id, a `Model` or a model name (its latest
        version), a `ModelVersion`, or "<model>:<version>" (name or id)."""
        workspace_id = self._workspace_id(workspace)
        steps = [self._step(ref, workspace_id) for ref in models_or_versions]
        request = deployment_pb2.DeployRequest(workspace_id=workspace_id, name=name, steps=steps)
        deployment = self._call(self._stubs.deployments.Deploy, request)
        if not wait:
            return Deployment.from_proto(deployment, self)
        return self.wait_deployment(name, workspace=workspace_id, on_status=on_status, timeout=timeout)

    def _step(self, ref: ModelRef, workspace_id: int) -> deployment_pb2.StepSpec:
        if isinstance(ref, ModelVersion):
            return deployment_pb2.StepSpec(model_id=ref.model_id, version=ref.version)
        if isinstance(ref, Model):
            return deployment_pb2.StepSpec(model_id=ref.id)
        if isinstance(ref, int):
            return deployment_pb2.StepSpec(model_id=ref)
        model, _, version = ref.partition(":")
        if version and not version.isdigit():
            raise errors.InvalidArgumentError(f"step {ref!r}: the version after ':' must be a number")
        model_id = int(model) if model.isdigit() else self.models.get(model, workspace=workspace_id).id
        return deployment_pb2.StepSpec(model_id=model_id, version=int(version) if version else None)

    def wait_deployment(
        self,
        name: str,
        *,
        workspace: WorkspaceRef | None = None,
        on_status: Callable[[Deployment], None] | None = None,
        timeout: float | None = None,
    ) -> Deployment:
        """Waits until a deployment is RUNNING, FAILED or STOPPED, with no change pending, and returns it."""
        request = deployment_pb2.WatchDeploymentRequest(
            name=name, workspace_id=self._optional_workspace(workspace)
        )
        show = None if on_status is None else (lambda m: on_status(Deployment.from_proto(m, self)))
        with self._grpc_errors():
            found = follow(
                lambda left: self._stubs.deployments.WatchDeployment(request, timeout=left),
                deployment_settled,
                show,
                timeout,
            )
        return Deployment.from_proto(found, self)

    def update(
        self,
        name: str,
        *models_or_versions: ModelRef,
        workspace: WorkspaceRef | None = None,
        reason: str = "",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Deployment:
        """Moves a running deployment to other model versions (or another pipeline) without downtime: the
        new steps are loaded and warmed while the old serve, then new streams go to them. With `wait`,
        returns once the change is live or failed (then `status_reason` says why and the old steps
        still serve). Steps as in `deploy`; `workspace` defaults to the deployment's."""
        workspace_id = self._deployment_workspace(name, workspace)
        request = deployment_pb2.UpdateDeploymentRequest(
            workspace_id=workspace_id,
            name=name,
            steps=[self._step(ref, workspace_id) for ref in models_or_versions],
            reason=reason,
        )
        return self._changed(self._stubs.deployments.UpdateDeployment, request, wait, timeout)

    def split(
        self,
        name: str,
        percent: int,
        *canary: ModelRef,
        workspace: WorkspaceRef | None = None,
        reason: str = "",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Deployment:
        """Sends `percent` percent of new streams to the `canary` pipeline (a stream stays on the version
        it started on); `split(name, 0)` removes the split."""
        workspace_id = self._deployment_workspace(name, workspace)
        request = deployment_pb2.SetTrafficSplitRequest(
            workspace_id=workspace_id,
            name=name,
            canary_steps=[self._step(ref, workspace_id) for ref in canary],
            canary_percent=percent,
            reason=reason,
        )
        return self._changed(self._stubs.deployments.SetTrafficSplit, request, wait, timeout)

    def shadow(
        self,
        name: str,
        *models_or_versions: ModelRef,
        workspace: WorkspaceRef | None = None,
        reason: str = "",
        wait: bool = True,
        timeout: float | None = None,
    ) -> Deployment:
        """Mirrors every request to the given pipeline, whose answers are compared and counted
        (`Deployment.shadow_stats`) but never returned; no steps removes the shadow."""
        workspace_id = self._deployment_workspace(name, workspace)
        request = deployment_pb2.SetShadowRequest(
            workspace_id=workspace_id,
            name=name,
            shadow_steps=[self._step(ref, workspace_id) for ref in models_or_versions],
            reason=reason,
        )
        return self._changed(self._stubs.deployments.SetShadow, request, wait, timeout)

    def follow(
        self,
        name: str,
        uri: str,
        *,
        registry: str | Registry,
        workspace: WorkspaceRef | None = None,
    ) -> AliasFollow:
        """Makes running deployment `name` follow a registry alias (`models:/<name>@<alias>`): whenever
        the alias moves, its version is uploaded, prepared and swapped in without downtime (a version that
        fails keeps the old one serving; `Deployment.follow.status_reason` says why)."""
        registry_id = registry.id if isinstance(registry, Registry) else registry
        request = deployment_pb2.FollowAliasRequest(
            workspace_id=self._deployment_workspace(name, workspace),
            name=name,
            registry_id=registry_id,
            uri=uri,
        )
        return AliasFollow.from_proto(self._call(self._stubs.deployments.FollowAlias, request))

    def stop_following(self, name: str, *, workspace: WorkspaceRef | None = None) -> Deployment:
        """Stops deployment `name` following its alias; it keeps serving the version it has."""
        request = deployment_pb2.StopFollowingAliasRequest(
            workspace_id=self._deployment_workspace(name, workspace), name=name
        )
        return Deployment.from_proto(self._call(self._stubs.deployments.StopFollowingAlias, request), self)

    def _changed(self, rpc: Any, request: Any, wait: bool, timeout: float | None) -> Deployment:
        pending = self._call(rpc, request)
        if not wait:
            return Deployment.from_proto(pending, self)
        return self.wait_deployment(request.name, workspace=request.workspace_id, timeout=timeout)

    def _deployment_workspace(self, name: str, workspace: WorkspaceRef | None) -> int:
        """The deployment's workspace: `workspace`, else that of the one deployment of that name you can
        see (its model names are looked up there too)."""
        if workspace is not None:
            return self._workspace_id(workspace)
        return self.deployments.get(name).workspace_id

    def undeploy(self, name: str, *, workspace: WorkspaceRef | None = None) -> Deployment:
        """Stops a deployment (of `workspace`, or the one of that name you can see); returns it STOPPED."""
        request = deployment_pb2.UndeployRequest(name=name, workspace_id=self._optional_workspace(workspace))
        return Deployment.from_proto(self._call(self._stubs.deployments.Undeploy, request), self)


def _flight_call_options(headers: list[tuple[bytes, bytes]]) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=headers)


def connect(
    server: str | None = None,
    *,
    token: str | None = None,
    flight: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Flightline:
    """Connects to a Flightline server (nothing is sent until the first call).

    `server` is the control plane's gRPC address (default `FLIGHTLINE_SERVER`, else 127.0.0.1:50051);
    `token` is sent as `authorization: Bearer <token>` on every gRPC and Flight call (default
    `FLIGHTLINE_TOKEN`); `flight` overrides the Flight location deployments advertise (e.g. behind a
    proxy). TLS: `tls_ca` is the PEM file of the CA that signed the server's certificate (default
    `FLIGHTLINE_TLS_CA`); `tls_cert` / `tls_key` this client's certificate and key for a server that
    asks for one (mTLS; `FLIGHTLINE_TLS_CERT`, `FLIGHTLINE_TLS_KEY`). Any of them turns TLS on."""
    server = server or os.environ.get("FLIGHTLINE_SERVER") or DEFAULT_SERVER
    token = token if token is not None else os.environ.get("FLIGHTLINE_TOKEN") or None
    tls = Tls.from_files(
        tls_ca or os.environ.get("FLIGHTLINE_TLS_CA"),
        tls_cert or os.environ.get("FLIGHTLINE_TLS_CERT"),
        tls_key or os.environ.get("FLIGHTLINE_TLS_KEY"),
    )
    return Flightline(server, token=token, flight=flight, tls=tls)
