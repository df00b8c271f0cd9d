"""Deployments: each pipeline step loaded on a runtime server of its group (or, for ONNX, in the front
door itself), and a route for the deployment at the front door."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelLoadError
from flightline.runtimes.host import Host
from flightline.runtimes.plugins import plugin
from flightline.server.dataplane.batching import MAX_DELAY_MS, Batching, BatchingStep
from flightline.server.dataplane.discovery import model_spec, placement
from flightline.server.dataplane.routes import (
    LocalStep,
    RemoteStep,
    Route,
    Router,
    Step,
    route_key,
    split_key,
)
from flightline.server.errors import (
    FailedPrecondition,
    FlightlineError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from flightline.server.hosting.backend import (
    SERVER_ENVIRONMENT,
    SHARED,
    Backend,
    LoadRequest,
    ServerGroup,
    workspace_group,
)
from flightline.server.hosting.environments import EnvironmentMissing, Environments, wanted
from flightline.server.hosting.local import RuntimeFault
from flightline.server.observability import DEFAULT, Observer
from flightline.server.services.changes import Changes
from flightline.server.services.names import check_dns_name, parse_schema
from flightline.server.store.artifacts import ArtifactStore
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import (
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    ModelStatus,
    ModelVersion,
)

log = logging.getLogger(__name__)

# States that need no more work from the server; a watch ends after one.
SETTLED = frozenset({DeploymentStatus.RUNNING, DeploymentStatus.FAILED, DeploymentStatus.STOPPED})


def batching_of(max_batch_rows: int, max_delay_ms: int) -> Batching:
    """The batching a deploy request asked for; InvalidArgument naming the field out of range."""
    if max_delay_ms > MAX_DELAY_MS:
        raise InvalidArgument(f"batching.max_delay_ms must be at most {MAX_DELAY_MS}, got {max_delay_ms}")
    if max_batch_rows > 65536:
        raise InvalidArgument(f"batching.max_batch_rows must be at most 65536, got {max_batch_rows}")
    return Batching(max_batch_rows or Batching.max_batch_rows, max_delay_ms)


def environment_key(version: ModelVersion, environments: Environments) -> str:
    """The environment a version runs in, derived from what it records (runtime, requirements, Python):
    SERVER_ENVIRONMENT or a built environment's key. Never builds: EnvironmentMissing (the deployment
    FAILS) saying how to build it, e.g. after the cache was wiped."""
    conversion = version.conversion
    need = wanted(plugin(version.runtime), conversion.requirements, conversion.python_version)
    return SERVER_ENVIRONMENT if need is None else environments.require(need).key


def server_group(version: ModelVersion, workspace_id: int, environment: str) -> ServerGroup:
    """Where a model runs: data-only artifacts share a server; user code gets its workspace's own; and
    each environment (`environment_key`) has its own servers, so models with different requirements
    never share one."""
    trust = SHARED if plugin(version.runtime).trusted_artifacts else workspace_group(workspace_id)
    return ServerGroup(environment, trust)


@dataclass(frozen=True)
class Live:
    """What the front door serves for a deployment, for the API to report."""

    route: Route
    runtimes: tuple[str, ...]


class DeploymentService:
    observer: Observer = DEFAULT  # the App sets its own

    def __init__(
        self,
        store: MetadataStore,
        artifacts: ArtifactStore,
        backend: Backend,
        router: Router,
        work_dir: Path,
        *,
        in_process_native: bool = True,
        workers: int = 2,
        changes: Changes | None = None,
        environments: Environments | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.backend = backend
        self.environments = environments or Environments()
        # In memory, deployments go by their route key, "<workspace id>/<name>" (names are unique per
        # workspace); runtime model keys are "<route key>.<step index>".
        self._placed: dict[str, ServerGroup] = {}  # step key -> where it is loaded
        self._batching: dict[str, Batching] = {}
        self.router = router
        self.work_dir = work_dir
        self.in_process_native = in_process_native
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()
        # One deploy or undeploy at a time per name, so an undeploy cannot interleave with a deploy.
        self._name_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._create_lock = threading.Lock()
        self.changes = changes or Changes()
        # Starting runtimes takes seconds to minutes (model loads): a bounded pool, not the RPC thread.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deploy")

    def deploy(
        self,
        workspace_id: int,
        name: str,
        steps: Sequence[DeploymentStep],
        *,
        batching: Batching | None = None,
    ) -> Deployment:
        """Checks the request and records the deployment DEPLOYING; its runtimes start in the background."""
        check_dns_name("deployment", name)
        versions = [self._ready_version(workspace_id, s) for s in steps]
        pinned = tuple(DeploymentStep(v.model_id, v.version) for v in versions)
        key = route_key(workspace_id, name)
        # Short and never held while runtimes start (that is the name lock's job), so two Deploys of
        # one name get ALREADY_EXISTS at once rather than racing on the table's unique name.
        with self._create_lock:
            deployment = self.store.create_deployment(workspace_id, name, pinned)  # ALREADY_EXISTS if taken
            with self._lock:  # in memory only: a restarted server resumes without batching
                if batching is not None and batching.enabled:
                    self._batching[key] = batching
                else:
                    self._batching.pop(key, None)
        self.changes.notify()
        self._pool.submit(self._start_in_background, deployment, versions)
        return deployment

    def undeploy(self, workspace_id: int, name: str) -> Deployment:
        key = route_key(workspace_id, name)
        with self._name_lock(key):
            deployment = self.store.get_deployment(workspace_id, name)
            self._stop(key, len(deployment.steps))
            stopped = self.store.update_deployment(workspace_id, name, DeploymentStatus.STOPPED)
        self.changes.notify()
        return stopped

    def watch(self, workspace_id: int, name: str, active: Callable[[], bool]) -> Iterator[Deployment]:
        """The deployment's current state, then each change, until RUNNING, FAILED or STOPPED."""
        return self.changes.watch(
            lambda: self.store.get_deployment(workspace_id, name),
            lambda d: (d.id, d.status, d.status_reason),
            lambda d: d.status in SETTLED,
            active=active,
        )

    def get(self, workspace_id: int, name: str) -> Deployment:
        return self.store.get_deployment(workspace_id, name)

    def in_workspace(
        self, workspace_id: int | None, limit: int, after_id: int = 0, only: frozenset[int] | None = None
    ) -> list[Deployment]:
        """Deployments of one workspace, or of every workspace for None (of those in `only`, if given)."""
        return self.store.list_deployments(workspace_id, limit, after_id, only=only)

    def live(self, workspace_id: int, name: str) -> Live | None:
        with self._lock:
            return self._live.get(route_key(workspace_id, name))

    def resume(self) -> None:
        """At start-up: bring back what was running before the server stopped, and retry what FAILED by a
        fault (a runtime's port taken, a crash): those may well start now. A deployment whose model failed
        stays FAILED."""
        for deployment in self.store.list_deployments():
            if deployment.owner != self.store.owner:  # another control plane's: it resumes its own
                continue
            retry = deployment.status is DeploymentStatus.FAILED and deployment.failed_by_fault
            if retry or deployment.status in (DeploymentStatus.RUNNING, DeploymentStatus.DEPLOYING):
                with self._name_lock(route_key(deployment.workspace_id, deployment.name)):
                    if retry:
                        log.info("retrying deployment %s (%s)", deployment.name, deployment.status_reason)
                        self.store.update_deployment(
                            deployment.workspace_id, deployment.name, DeploymentStatus.DEPLOYING
                        )
                    versions = [self.store.get_model_version(s.model_id, s.version) for s in deployment.steps]
                    self._start(deployment, versions)
        self.changes.notify()

    def runtime_failed(self, key: str, reason: str, by_fault: bool) -> None:
        """The backend gave up on a step's model (`by_fault`: its server could not start, not the model's
        own load error): the deployment cannot serve any more."""
        route, _, index = key.rpartition(".")
        workspace_id, name = split_key(route)
        with self._name_lock(route):
            deployment = self.store.get_deployment(workspace_id, name)
            if deployment.status is not DeploymentStatus.RUNNING:
                return
            self._stop(route, len(deployment.steps))
            self.store.update_deployment(
                workspace_id,
                name,
                DeploymentStatus.FAILED,
                f"step {int(index) + 1}: {reason}",
                by_fault=by_fault,
            )
        self.changes.notify()

    def release_others(self) -> None:
        """Stops what this instance serves for deployments that are no longer its RUNNING ones: another
        control plane on the same database undeployed or replaced them (called when routes changed)."""
        with self._lock:
            names = list(self._live)
        for name in names:
            with self._name_lock(name):  # a start or stop of ours finishes first, so states agree
                with self._lock:
                    live = self._live.get(name)
                try:
                    current: Deployment | None = self.store.get_deployment(*split_key(name))
                except NotFound:
                    current = None
                running = (
                    current is not None
                    and current.owner == self.store.owner
                    and current.status is DeploymentStatus.RUNNING
                )
                if live is not None and not running:
                    log.info("deployment %s was stopped or replaced elsewhere: stopping its runtimes", name)
                    self._stop(name, len(live.route.steps))
        self.changes.notify()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # queued ones stay DEPLOYING: resumed at start
        with self._lock:
            names = list(self._live)
        for name in names:
            self.router.remove(name)
        self.backend.close()

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks[name]

    def _ready_version(self, workspace_id: int, step: DeploymentStep) -> ModelVersion:
        model = self.store.get_model(step.model_id)
        if model.workspace_id != workspace_id and model.visibility != "public":
            # Another workspace's private model: as if it did not exist, so its id does not leak.
            raise NotFound(f"model {step.model_id} does not exist")
        version = self.store.get_model_version(step.model_id, step.version)
        if version.status is not ModelStatus.READY:
            raise FailedPrecondition(
                f"model {version.model_name} version {version.version} is {version.status.value}, not ready"
                + (f": {version.status_reason}" if version.status_reason else "")
            )
        return version

    def _start_in_background(self, deployment: Deployment, versions: Sequence[ModelVersion]) -> None:
        try:
            with self._name_lock(route_key(deployment.workspace_id, deployment.name)):
                current = self.store.get_deployment(deployment.workspace_id, deployment.name)
                # Undeployed (or replaced) while queued: nothing to start.
                if current.id == deployment.id and current.status is DeploymentStatus.DEPLOYING:
                    self.observer.deployed(self._start(current, versions))
        except Exception:  # the store itself failed; the deployment is resumed at the next start
            log.exception("deploying %s failed", deployment.name)
        finally:
            self.changes.notify()

    def _start(self, deployment: Deployment, versions: Sequence[ModelVersion]) -> Deployment:
        workspace_id, name = deployment.workspace_id, deployment.name
        key = route_key(workspace_id, name)
        try:
            steps = [self._step(key, workspace_id, i, v) for i, v in enumerate(versions)]
        except Exception as exc:
            self._stop(key, len(versions))
            if not isinstance(exc, (ModelLoadError, FlightlineError)):
                log.exception("deploying %s failed", key)
            return self.store.update_deployment(
                workspace_id, name, DeploymentStatus.FAILED, str(exc), by_fault=_by_fault(exc)
            )
        route = Route.of(key, steps)
        with self._lock:
            self._live[key] = Live(route, tuple(v.runtime for v in versions))
        self.router.put(route)
        # Recorded for front doors in other processes (dataplane/discovery.py), which route the same way.
        placements = [placement(step) for step in steps]
        return self.store.update_deployment(
            workspace_id, name, DeploymentStatus.RUNNING, placements=placements
        )

    def _step(self, name: str, workspace_id: int, index: int, version: ModelVersion) -> Step:
        input_schema = parse_schema("input_schema", version.input_schema)
        output_schema = parse_schema("output_schema", version.output_schema)
        options = dict(version.conversion.options)
        what = f"step {index + 1} ({version.model_name} v{version.version})"
        try:
            environment = environment_key(version, self.environments)
        except EnvironmentMissing as exc:
            raise EnvironmentMissing(f"{what}: {exc}") from None
        # Data artifacts on the server's packages run inside the front door, saving a hop (see the README
        # benchmark), and are then not loaded a second time on a runtime server; user code (a pickle, a
        # Python step) stays in its own sandboxed process, as does a model with an environment of its own.
        in_front_door = plugin(version.runtime).in_front_door and environment == SERVER_ENVIRONMENT
        if self.in_process_native and in_front_door:
            # One way to build a front-door step's spec: the route discovery of other front doors uses it too.
            spec = model_spec(version, self._artifact(version))
            return LocalStep(Host(load_runtime(version.runtime, spec)))
        key = f"{name}.{index}"
        group = server_group(version, workspace_id, environment)
        request = LoadRequest(
            key=key,
            runtime=version.runtime,
            artifact=version.sha256,
            framework=version.framework,
            input_schema=input_schema,
            output_schema=output_schema,
            options=options,
            unpack=plugin(version.runtime).unpacks,
        )
        with self._lock:
            self._placed[key] = group
        try:
            location = self.backend.ensure_server(group)
            secret = self.backend.secret(group)
            self.backend.load(group, request)
        except (ModelLoadError, RuntimeFault) as exc:
            raise type(exc)(f"{what}: {exc}") from exc
        with self._lock:
            batching = self._batching.get(name)
        remote = RemoteStep(location, key, secret=secret)
        return remote if batching is None else BatchingStep(remote, batching)

    def _artifact(self, version: ModelVersion) -> Path:
        """A local file of the artifact, for the runtimes that run in the front door (ONNX files)."""
        return self.artifacts.local_path(version.sha256, self.work_dir / "cache")

    def _stop(self, name: str, count: int) -> None:
        self.router.remove(name)
        with self._lock:
            live = self._live.pop(name, None)
            self._batching.pop(name, None)
        for step in live.route.steps if live is not None else ():
            if isinstance(step, BatchingStep):
                step.close()
        for index in range(count):
            key = f"{name}.{index}"
            with self._lock:
                group = self._placed.pop(key, None)
            if group is not None:
                self.backend.unload(group, key)


def _by_fault(error: Exception) -> bool:
    """Whether a failed start may succeed later: a fault (a runtime that could not start, an unreachable
    store, a bug) rather than the model (a load error) or the request (e.g. a missing version)."""
    if isinstance(error, ModelLoadError):
        return False
    return isinstance(error, Unavailable) or not isinstance(error, FlightlineError)
