"""Who may call what: the ONE table of the role every RPC needs (`RULES`), and the gRPC interceptor that
authenticates every call (`authorization: Bearer <token>`, checked by `access.authn`) and checks the
caller's role on the workspace the request touches before the handler runs.

How a request names its workspace (`Scope`): its `workspace_id` (or that of its first message's
`metadata`, for uploads); the workspace of its `model_id` (public models are readable by every caller);
the workspaces a `registry_id` is attached to (a role in any of them); or a deployment's (workspace_id,
name), where workspace_id 0 means the one deployment of that name the caller can see, written back into
the request so the handler serves exactly what was checked.

A caller with no role in the workspace gets NOT_FOUND with the words a missing resource gets, so ids of
other workspaces do not leak; a member whose role is too low gets PERMISSION_DENIED. An RPC missing from
RULES is refused (tests/test_auth.py fails for it first): a new RPC needs a row here.

Calls that change something are audited (`audit.py`): who, which RPC, which resource, and the outcome."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import grpc

from flightline.server.access import audit
from flightline.server.access.authn import HEADER, Authenticator, Identity, bound
from flightline.server.access.quotas import CallerLimits
from flightline.server.access.roles import Role
from flightline.server.api.observe import workspace_of
from flightline.server.api.status import status_of
from flightline.server.errors import InvalidArgument, NotFound, PermissionDenied
from flightline.server.store.metadata import MetadataStore
from flightline.v1 import access_pb2, deployment_pb2, model_pb2, registry_pb2, workspace_pb2

log = logging.getLogger(__name__)


class Scope(Enum):
    NONE = "none"  # touches no one workspace (the caller's own things, the catalog)
    WORKSPACE = "workspace"  # request.workspace_id (or metadata.workspace_id)
    MODEL = "model"  # the workspace of request.model_id; public models are readable by all
    REGISTRY = "registry"  # the workspaces request.registry_id is attached to
    DEPLOYMENT = "deployment"  # (request.workspace_id, request.name); 0 resolves by name


@dataclass(frozen=True)
class Rule:
    role: Role | None  # the role needed in the scope's workspace; None: any authenticated caller
    scope: Scope = Scope.NONE
    audit: bool = False  # changes something: recorded in the audit table
    platform_admin: bool = False  # platform administrators only
    uploads: bool = False  # counted against the caller's concurrent uploads


VIEW, EDIT, ADMIN = Role.VIEWER, Role.EDITOR, Role.ADMIN
ANY: Final = Rule(None)
WS, MODEL, REG, DEP = Scope.WORKSPACE, Scope.MODEL, Scope.REGISTRY, Scope.DEPLOYMENT


def _service(file: Any, service: str, rules: dict[str, Rule]) -> dict[str, Rule]:
    # Looked up in the descriptors, so a renamed or removed method fails at import.
    described = file.DESCRIPTOR.services_by_name[service]
    return {f"/{described.full_name}/{described.methods_by_name[m].name}": r for m, r in rules.items()}


# The ONE table: every RPC of every service, and the role it needs.
RULES: Final[dict[str, Rule]] = {
    **_service(
        workspace_pb2,
        "WorkspaceService",
        {
            "CreateWorkspace": Rule(None, audit=True),  # the creator becomes its admin
            "GetWorkspace": Rule(VIEW, WS),
            "ListWorkspaces": ANY,  # lists the caller's workspaces
        },
    ),
    **_service(
        registry_pb2,
        "RegistryService",
        {
            "CreateRegistry": Rule(ADMIN, WS, audit=True),
            "AttachRegistry": Rule(ADMIN, REG, audit=True),  # and admin of workspace_id (checked too)
            "DetachRegistry": Rule(ADMIN, WS, audit=True),
            "GetRegistry": Rule(VIEW, REG),
            "ListRegistries": Rule(VIEW, WS),
            "ListRegistryModels": Rule(VIEW, REG),
            "ListRegistryModelVersions": Rule(VIEW, REG),
            "ListModelVersionArtifacts": Rule(VIEW, REG),
        },
    ),
    **_service(
        model_pb2,
        "ModelService",
        {
            "UploadFromRegistry": Rule(EDIT, WS, audit=True, uploads=True),
            "UploadModel": Rule(EDIT, WS, audit=True, uploads=True),
            "WatchModelVersion": Rule(VIEW, MODEL),
            "GetModel": Rule(VIEW, MODEL),
            "ListModels": Rule(VIEW, WS),
            "GetModelVersion": Rule(VIEW, MODEL),
            "ListModelVersions": Rule(VIEW, MODEL),
            "ListFrameworks": ANY,
        },
    ),
    **_service(
        deployment_pb2,
        "DeploymentService",
        {
            "Deploy": Rule(EDIT, WS, audit=True),
            "FollowAlias": Rule(EDIT, DEP, audit=True),  # the registry must be attached to the workspace
            "StopFollowingAlias": Rule(EDIT, DEP, audit=True),
            "WatchDeployment": Rule(VIEW, DEP),
            "Undeploy": Rule(EDIT, DEP, audit=True),
            "GetDeployment": Rule(VIEW, DEP),
            "ListDeployments": Rule(VIEW, WS),  # without workspace_id: the caller's workspaces
            "UpdateDeployment": Rule(EDIT, DEP, audit=True),
            "SetTrafficSplit": Rule(EDIT, DEP, audit=True),
            "SetShadow": Rule(EDIT, DEP, audit=True),
            "ListDeploymentRevisions": Rule(VIEW, DEP),
        },
    ),
    **_service(
        access_pb2,
        "AccessService",
        {
            "WhoAmI": ANY,
            "CreateUser": Rule(None, audit=True, platform_admin=True),
            "ListUsers": Rule(None, platform_admin=True),
            "CreateToken": Rule(None, audit=True),  # own tokens; platform admins: anyone's
            "ListTokens": ANY,
            "RevokeToken": Rule(None, audit=True),
            "SetMember": Rule(ADMIN, WS, audit=True),
            "RemoveMember": Rule(ADMIN, WS, audit=True),
            "ListMembers": Rule(VIEW, WS),
        },
    ),
}

# Answer without a token: load balancers' health checks, and grpcurl's `list` / `describe`.
OPEN_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection")  # fmt: skip


@dataclass(frozen=True)
class Target:
    workspaces: tuple[int, ...]
    missing: str  # what a caller without a role there is told (the words a missing resource gets)
    public: bool = False  # a public model: readable by every caller


class Authorizer:
    """Finds the workspace(s) a request touches and checks the caller's role there."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def check(self, identity: Identity, method: str, rule: Rule, request: Any) -> int | None:
        """Raises NotFound / PermissionDenied / InvalidArgument; returns the workspace checked (if one)."""
        if rule.platform_admin and not identity.admin:
            raise PermissionDenied(f"{_short(method)} is for platform administrators")
        if rule.role is None:
            return None
        if method.endswith("/ListDeployments") and not request.HasField("workspace_id"):
            return None  # lists the caller's workspaces only (the servicer filters)
        target = self._target(identity, rule.scope, request)
        self._require(identity, rule.role, target, method)
        if method.endswith("/AttachRegistry"):  # the registry's side was checked; now the workspace's
            self._require(identity, rule.role, self._workspace(request.workspace_id), method)
            return int(request.workspace_id)
        return target.workspaces[0] if len(target.workspaces) == 1 else None

    def _require(self, identity: Identity, role: Role, target: Target, method: str) -> None:
        held = [r for r in (identity.role_in(w) for w in target.workspaces) if r is not None]
        if not held:
            if target.public and role is Role.VIEWER:
                return
            raise NotFound(target.missing)
        best = max(held)
        if best < role:
            raise PermissionDenied(f"{_short(method)} needs the {role.label} role; you are {best.label} here")

    def _target(self, identity: Identity, scope: Scope, request: Any) -> Target:
        if scope is Scope.WORKSPACE:
            return self._workspace(workspace_of(request) or 0)
        if scope is Scope.MODEL:
            model_id = int(request.model_id)
            model = self.store.get_model(model_id)  # NotFound "model N does not exist"
            return Target(
                (model.workspace_id,), f"model {model_id} does not exist", model.visibility == "public"
            )
        if scope is Scope.REGISTRY:
            registry = self.store.get_registry(request.registry_id)  # NotFound when unknown
            return Target(registry.workspace_ids, f"registry {request.registry_id!r} does not exist")
        if scope is Scope.DEPLOYMENT:
            return self._deployment(identity, request)
        raise ValueError(f"scope {scope} names no workspace")

    @staticmethod
    def _workspace(workspace_id: int) -> Target:
        return Target((workspace_id,), f"workspace {workspace_id} does not exist")

    def _deployment(self, identity: Identity, request: Any) -> Target:
        missing = f"deployment {request.name!r} does not exist"
        if request.workspace_id:
            return Target((int(request.workspace_id),), missing)
        seen = [d.workspace_id for d in self.store.deployments_named(request.name)]
        visible = sorted({w for w in seen if identity.role_in(w) is not None})
        if len(visible) > 1:
            raise InvalidArgument(
                f"deployment {request.name!r} exists in workspaces {', '.join(map(str, visible))}: "
                "set workspace_id"
            )
        if not visible:
            raise NotFound(missing)
        request.workspace_id = visible[0]  # the handler serves what was checked
        return Target((visible[0],), missing)


def _short(method: str) -> str:
    return method.rpartition("/")[2]


def header_of(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Inside ErrorInterceptor (its errors get their status codes there), outside CallInterceptor."""

    def __init__(
        self,
        authenticator: Authenticator,
        authorizer: Authorizer,
        recorder: audit.Recorder,
        limits: CallerLimits,
        rules: dict[str, Rule] = RULES,
    ) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.recorder = recorder
        self.limits = limits
        self.rules = rules

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        if method.lstrip("/").partition("/")[0] in OPEN_SERVICES:
            return handler
        rule = self.rules.get(method)
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(method, rule, handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._client_stream(method, rule, handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._server_stream(method, rule, handler.unary_stream))
        return handler._replace(stream_stream=self._refuse(method))  # none in the API

    def _caller(self, method: str, rule: Rule | None, context: grpc.ServicerContext) -> tuple[Identity, Rule]:
        identity = self.authenticator.authenticate(header_of(context))
        if rule is None:  # fail closed: an RPC nobody gave a role to is nobody's
            log.error("no access rule for %s: refused (add it to api/auth.py RULES)", method)
            raise PermissionDenied(f"{_short(method)} has no access rule on this server")
        return identity, rule

    def _unary(self, method: str, rule: Rule | None, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            identity: Identity | None = None
            workspace: int | None = None
            try:
                identity, found = self._caller(method, rule, context)
                workspace = self.authorizer.check(identity, method, found, request)
                with bound(identity), self.limits.upload(identity, found.uploads):
                    response = behavior(request, context)
            except Exception as exc:
                self._audit(rule, identity, method, request, workspace, status_of(exc).name)
                raise
            self._audit(rule, identity, method, request, workspace, "OK")
            return response

        return run

    def _client_stream(
        self, method: str, rule: Rule | None, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            identity, found = self._caller(method, rule, context)
            seen: dict[str, Any] = {}

            def checked() -> Iterator[Any]:
                first = True
                for request in requests:
                    if first:  # the first message names the workspace (an upload's metadata)
                        first = False
                        seen["request"] = request
                        seen["workspace"] = self.authorizer.check(identity, method, found, request)
                    yield request

            try:
                with bound(identity), self.limits.upload(identity, found.uploads):
                    response = behavior(checked(), context)
            except Exception as exc:
                self._audit(
                    found, identity, method, seen.get("request"), seen.get("workspace"), status_of(exc).name
                )
                raise
            self._audit(found, identity, method, seen.get("request"), seen.get("workspace"), "OK")
            return response

        return run

    def _server_stream(
        self, method: str, rule: Rule | None, behavior: Callable[..., Any]
    ) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            identity, found = self._caller(method, rule, context)
            self.authorizer.check(identity, method, found, request)
            with bound(identity), self.limits.stream(identity):
                yield from behavior(request, context)

        return run

    @staticmethod
    def _refuse(method: str) -> Callable[..., Any]:
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            raise PermissionDenied(f"{_short(method)} has no access rule on this server")

        return run

    def _audit(
        self,
        rule: Rule | None,
        identity: Identity | None,
        method: str,
        request: Any,
        workspace: int | None,
        outcome: str,
    ) -> None:
        if rule is None or not rule.audit:
            return
        if workspace is None and request is not None:
            workspace = workspace_of(request)
        self.recorder.record(identity, _short(method), audit.resource_of(request), workspace, outcome)
