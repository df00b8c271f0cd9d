"""Composition root: builds the stores, services, runtime backend, front door and gRPC server from Settings.
Everything lives on the App instance; there is no global state.

`App` runs role "all" (everything in one process tree) or "control" (gRPC and the runtimes, no Flight);
`FrontDoorApp` runs role "frontdoor" (Flight only, routes read from the metadata store); `build` picks."""

from __future__ import annotations

import logging
import os
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flightline.server.access.audit import Recorder
from flightline.server.access.authn import Authenticator, bootstrap_admin
from flightline.server.access.quotas import CallerLimits
from flightline.server.api import reflection
from flightline.server.api.access import AccessServicer
from flightline.server.api.auth import AuthInterceptor, Authorizer
from flightline.server.api.calls import CallInterceptor, SlowLane
from flightline.server.api.deployments import DeploymentServicer
from flightline.server.api.models import ModelServicer
from flightline.server.api.observe import ObserveInterceptor
from flightline.server.api.registries import RegistryServicer
from flightline.server.api.status import ErrorInterceptor
from flightline.server.api.workspaces import WorkspaceServicer
from flightline.server.dataplane.discovery import Poller, RouteSync, on_route_change
from flightline.server.dataplane.frontdoor import FrontDoor
from flightline.server.dataplane.routes import Router, route_key
from flightline.server.hosting.environments import Environments
from flightline.server.hosting.local import LocalBackend
from flightline.server.hosting.sandbox import Sandbox, private_dir, private_file
from flightline.server.instance import check_role, instance_id
from flightline.server.observability import Observer
from flightline.server.services.access import AccessService
from flightline.server.services.changes import Changes
from flightline.server.services.deployments import DeploymentService, resumable
from flightline.server.services.follow import AliasFollower
from flightline.server.services.models import ModelService
from flightline.server.services.registries import RegistryService
from flightline.server.services.workspaces import WorkspaceService
from flightline.server.settings import Settings
from flightline.server.store.artifacts import ArtifactStore
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import DeploymentStatus
from flightline.server.store.secrets import Secrets, load_keys
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

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024 * 1024
SERVICES = [
    workspace_pb2.DESCRIPTOR.services_by_name["WorkspaceService"],
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    model_pb2.DESCRIPTOR.services_by_name["ModelService"],
    deployment_pb2.DESCRIPTOR.services_by_name["DeploymentService"],
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
]


def build(settings: Settings) -> App | FrontDoorApp:
    """The server for `settings.role`."""
    return FrontDoorApp(settings) if check_role(settings.role) == "frontdoor" else App(settings)


def _open_store(settings: Settings) -> tuple[Path, str, MetadataStore]:
    """(data folder, instance id, metadata store owned by that instance)."""
    # Owner-only: user code runs as another user (see hosting/sandbox.py) and must not read the
    # metadata database (registry tokens) nor the artifacts of other models.
    data = private_dir(settings.data_dir.resolve())
    instance = instance_id(settings.instance_id, data)
    database = data / "flightline.db"
    if not settings.database_url and not database.exists():  # created owner-only before SQLite opens it
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    secrets = Secrets(load_keys(settings.secret_key, data))
    store = MetadataStore(settings.metadata_url, owner=instance, secrets=secrets)
    if not settings.database_url:
        for path in data.glob("flightline.db*"):
            private_file(path)
    return data, instance, store


def _read(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


def flight_tls(settings: Settings) -> dict[str, Any]:
    """FlightServerBase options for TLS (and mTLS) from settings; {} without TLS."""
    if not settings.tls:
        return {}
    import pyarrow.flight as flight

    options: dict[str, Any] = {
        "tls_certificates": [flight.CertKeyPair(_read(settings.tls_cert), _read(settings.tls_key))]
    }
    if settings.tls_client_ca:
        options["verify_client"] = True
        options["root_certificates"] = _read(settings.tls_client_ca)
    return options


def flight_scheme(settings: Settings) -> str:
    return "grpc+tls" if settings.tls else "grpc+tcp"


class Access:
    """What both planes share to check callers: built once per server process."""

    def __init__(self, settings: Settings, store: MetadataStore, data: Path) -> None:
        self.authenticator = Authenticator(store, ttl=settings.token_cache_seconds)
        self.limits = CallerLimits(settings.caller_max_uploads, settings.caller_max_streams)
        store.encrypt_clear_tokens()  # rows written before migration 0005
        self.admin_token_file = bootstrap_admin(store, data, settings.bootstrap_token)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.observer = Observer()  # this App's logs and metrics (a registry of its own)
        self.role = check_role(settings.role)
        if self.role == "frontdoor":
            raise ValueError("role frontdoor is served by FrontDoorApp (see build())")
        data, self.instance_id, self.store = _open_store(settings)
        self.access = Access(settings, self.store, data)
        # Outside the data folder, which the sandbox user cannot traverse: runtimes' specs and artifacts.
        self.sandbox = Sandbox.temporary()
        self.artifacts = ArtifactStore(settings.artifact_url)
        self.environments = Environments(Path(settings.envs_dir) if settings.envs_dir else None)
        self.workspaces = WorkspaceService(self.store)
        if not 1 <= settings.slow_lane < settings.grpc_workers:
            raise ValueError(
                f"slow_lane ({settings.slow_lane}) must be at least 1 and below grpc_workers "
                f"({settings.grpc_workers}), so health checks and reads always find a worker"
            )
        self.slow_lane = SlowLane(settings.slow_lane)
        timeouts = httpx.Timeout(
            connect=settings.registry_connect_timeout,
            read=settings.registry_timeout,
            write=settings.registry_write_timeout,
            pool=settings.registry_pool_timeout,
        )
        self.registries = RegistryService(self.store, timeout=timeouts)
        changes = Changes()  # one notifier: watches of versions and deployments wake on either
        self.models = ModelService(
            self.store,
            self.artifacts,
            self.registries,
            data / "work",
            workers=settings.prepare_workers,
            changes=changes,
            environments=self.environments,
        )
        self.router = Router()
        # The front door listens from construction, before start() resumes the deployments: their
        # streams get UNAVAILABLE (retry) meanwhile, not NOT_FOUND, and its healthcheck is not ready.
        self.store.claim_unowned()
        self.router.expect(resumable(self.store))
        # A Flight server listens from construction; serve() would only block and steal SIGTERM.
        self.front_door: FrontDoor | None = None
        self.flight_location = settings.public_flight_location
        if self.role == "all":
            scheme = flight_scheme(settings)
            self.front_door = FrontDoor(
                self.router,
                f"{scheme}://{settings.host}:{settings.flight_port}",
                authenticator=self.access.authenticator,
                limits=self.access.limits,
                **flight_tls(settings),
            )
            self.flight_location = f"{scheme}://{settings.host}:{self.front_door.port}"
        if settings.runtime_transport not in ("unix", "tcp"):
            raise ValueError(f"runtime_transport must be 'unix' or 'tcp', not {settings.runtime_transport!r}")
        self.backend = LocalBackend(
            self.sandbox.root / "runtimes",
            self.artifacts,
            transport="tcp" if settings.runtime_transport == "tcp" else "unix",
            host=settings.host,
            retry_for=settings.runtime_retry_seconds,
            on_failure=lambda key, reason, by_fault: self.deployments.runtime_failed(key, reason, by_fault),
            sandbox=self.sandbox,
            environments=self.environments,
        )
        self.deployments = DeploymentService(
            self.store,
            self.artifacts,
            self.backend,
            self.router,
            data / "work",
            in_process_native=settings.in_process_native,
            workers=settings.deploy_workers,
            changes=changes,
            environments=self.environments,
        )
        self.models.observer = self.deployments.observer = self.backend.observer = self.observer
        if self.front_door is not None:
            self.front_door.observer = self.observer
        # Another control plane on the same database may undeploy or replace our deployments.
        self._follow = Poller(
            on_route_change(self.store, self.deployments.release_others),
            settings.route_poll_seconds,
            "follow-deployments",
        )
        # Deployments that follow a registry alias (services/follow.py).
        self.follower = AliasFollower(
            self.store,
            self.models,
            self.registries,
            self.deployments,
            period=settings.follow_poll_seconds,
        )
        self.audit = Recorder(self.store)
        self.grpc_server = self._grpc_server()
        address = f"{settings.host}:{settings.grpc_port}"
        if settings.tls:
            credentials = grpc.ssl_server_credentials(
                [(_read(settings.tls_key), _read(settings.tls_cert))],
                root_certificates=_read(settings.tls_client_ca) if settings.tls_client_ca else None,
                require_client_auth=bool(settings.tls_client_ca),
            )
            self.grpc_port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.grpc_port = self.grpc_server.add_insecure_port(address)
        self.metrics_port = self.observer.metrics.serve(settings.host, settings.metrics_port)  # -1: off

    @property
    def grpc_address(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    def start(self) -> App:
        # What a crash interrupted: versions still preparing end ERROR; their work folders and
        # upload temps go now (converter children died with the old server: they exit with its pipe).
        # Only this instance's work: rows from before ownership existed are claimed first, once.
        self.store.claim_unowned()
        self.models.fail_interrupted()
        self.models.clean_work()
        self.artifacts.clean_temps()
        self.grpc_server.start()
        self.deployments.resume()
        self._follow.start()
        self.follower.start()
        log.info(
            "instance %s (role %s) serving gRPC on %s and Flight on %s",
            self.instance_id,
            self.role,
            self.grpc_address,
            self.flight_location or "(none)",
        )
        if self.metrics_port > 0:
            log.info("serving metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)
        return self

    def stop(self) -> bool:
        """Stops within a bounded time; False if Flight client streams were still open after the grace
        (their handler threads are blocked in pyarrow: a process that wants to exit must `os._exit`)."""
        # Clients first (bounded, both servers at once), then the runtimes their streams may still be using.
        grpc_stopped = self.grpc_server.stop(grace=2)
        closed = self.front_door is None or self.front_door.close(grace=self.settings.shutdown_grace)
        grpc_stopped.wait()
        self._follow.close()
        self.follower.close()
        self.audit.close()
        self.models.close()
        self.deployments.close()
        self.sandbox.close()
        self.observer.close()
        return closed

    def __enter__(self) -> App:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _grpc_server(self) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.grpc_workers, thread_name_prefix="grpc"),
            # Outermost first: the observer sees every final status code; errors raised by the call
            # plumbing get their status codes too.
            interceptors=[
                ObserveInterceptor(self.observer),
                ErrorInterceptor(),
                AuthInterceptor(
                    self.access.authenticator,
                    Authorizer(self.store),
                    self.audit,
                    self.access.limits,
                ),
                CallInterceptor(self.slow_lane),
            ],
            options=[
                ("grpc.max_receive_message_length", self.settings.max_request_bytes),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        forget = self.access.authenticator.forget
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceServicer(self.workspaces, forget), server
        )
        access_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessServicer(AccessService(self.store, self.access.authenticator)), server
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(self.registries), server)
        model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.models), server)
        deployment_pb2_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentServicer(self.deployments, self.flight_location, self.follower), server
        )
        health_servicer = health.HealthServicer()
        for service in SERVICES:
            health_servicer.set(service.full_name, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable([s.full_name for s in SERVICES] + [health.SERVICE_NAME], server)
        return server


class FrontDoorApp:
    """Role "frontdoor": the Flight front door alone. It starts no runtimes and changes nothing in the
    store; `RouteSync` keeps its router equal to the RUNNING deployments, whoever deployed them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.role = "frontdoor"
        data, self.instance_id, self.store = _open_store(settings)
        self.access = Access(settings, self.store, data)
        self.artifacts = ArtifactStore(settings.artifact_url)
        self.router = Router()
        # Until the first sync routes them, the deployments that run get UNAVAILABLE (retry), not NOT_FOUND.
        self.router.expect(
            route_key(d.workspace_id, d.name)
            for d in self.store.list_deployments()
            if d.status in (DeploymentStatus.RUNNING, DeploymentStatus.DEPLOYING)
        )
        self.route_sync = RouteSync(
            self.store,
            self.artifacts,
            self.router,
            data / "work" / "cache",
            period=settings.route_poll_seconds,
        )
        scheme = flight_scheme(settings)
        self.front_door = FrontDoor(
            self.router,
            f"{scheme}://{settings.host}:{settings.flight_port}",
            ready=lambda: self.route_sync.ready,
            authenticator=self.access.authenticator,
            limits=self.access.limits,
            **flight_tls(settings),
        )
        self.flight_location = f"{scheme}://{settings.host}:{self.front_door.port}"

    def start(self) -> FrontDoorApp:
        self.route_sync.start()
        log.info("instance %s (role frontdoor) serving Flight on %s", self.instance_id, self.flight_location)
        return self

    def stop(self) -> bool:
        closed = self.front_door.close(grace=self.settings.shutdown_grace)
        self.route_sync.close()
        self.store.close()
        return closed

    def __enter__(self) -> FrontDoorApp:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
