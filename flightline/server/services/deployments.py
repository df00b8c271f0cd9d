"""Deployments: each pipeline step loaded on a runtime server of its group (or, for ONNX, in the front
door itself), and a route for the deployment at the front door. A live deployment changes without
downtime (update, traffic split, shadow): the new pipeline is loaded and warmed beside the old one, the
front door's route is swapped in one step, and the old pipeline is unloaded once its streams ended."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelLoadError, sample_batch
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
    Usage,
    answered_by,
    route_key,
    split_key,
)
from flightline.server.dataplane.shadow import Shadow, ShadowStats
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
    Plan,
    Revision,
)

log = logging.getLogger(__name__)

# States that need no more work from the server; a watch ends after one.
SETTLED = frozenset({DeploymentStatus.RUNNING, DeploymentStatus.FAILED, DeploymentStatus.STOPPED})
# How long retired steps (an update's old ones) stay loaded for the streams still using them, at most.
DRAIN_SECONDS: Final = 30.0


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


@dataclass(eq=False)
class Loaded:
    """One pipeline loaded for a deployment: its steps, and what to unload once it is retired. Routes
    built over it (`route`) share its `usage`, so it drains however many routes it served under."""

    pins: tuple[DeploymentStep, ...]
    steps: tuple[Step, ...]
    runtimes: tuple[str, ...]
    keys: tuple[tuple[ServerGroup, str], ...]  # models on runtime servers
    usage: Usage = field(default_factory=Usage)

    def route(self, name: str, revision: int, variant: str) -> Route:
        pins = ((s.model_id, s.version) for s in self.pins)
        return replace(
            Route.of(name, self.steps, answered_by=answered_by(revision, variant, pins)), usage=self.usage
        )


@dataclass(frozen=True)
class Live:
    """What the front door serves for a deployment, for the API to report and for changes to reuse."""

    primary: Loaded
    route: Route  # the primary's, as served
    revision: int = 1
    canary: Loaded | None = None
    canary_route: Route | None = None
    canary_percent: int = 0
    shadow: Loaded | None = None
    mirror: Shadow | None = None

    @classmethod
    def of(
        cls,
        name: str,
        revision: int,
        primary: Loaded,
        canary: Loaded | None = None,
        canary_percent: int = 0,
        shadow: Loaded | None = None,
        mirror: Shadow | None = None,
    ) -> Live:
        return cls(
            primary,
            primary.route(name, revision, "primary"),
            revision,
            canary,
            canary.route(name, revision, "canary") if canary else None,
            canary_percent if canary else 0,
            shadow,
            mirror,
        )

    @property
    def runtimes(self) -> tuple[str, ...]:
        return self.primary.runtimes

    def loaded(self) -> list[Loaded]:
        return [x for x in (self.primary, self.canary, self.shadow) if x is not None]


Change = Callable[[Deployment], Plan]


class DeploymentService:
    observer: Observer = DEFAULT  # the App sets its own
    drain_seconds: float = DRAIN_SECONDS

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
        # workspace); runtime model keys are "<route key>.<step index>" (the deploy's) or
        # "<route key>@<tag>.<step index>" (a change's, e.g. "3/fraud@r2.0").
        self._placed: dict[str, ServerGroup] = {}  # step key -> where it is loaded
        self._batching: dict[str, Batching] = {}
        self.router = router
        self.work_dir = work_dir
        self.in_process_native = in_process_native
        self._live: dict[str, Live] = {}
        self._lock = threading.Lock()
        # One deploy, change or undeploy at a time per name, so they cannot interleave.
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
        actor: str = "",
    ) -> Deployment:
        """Checks the request and records the deployment DEPLOYING; its runtimes start in the background."""
        check_dns_name("deployment", name)
        versions = [self._ready_version(workspace_id, s) for s in steps]
        pinned = tuple(DeploymentStep(v.model_id, v.version) for v in versions)
        key = route_key(workspace_id, name)
        # Short and never held while runtimes start (that is the name lock's job), so two Deploys of
        # one name get ALREADY_EXISTS at once rather than racing on the table's unique name.
        with self._create_lock:
            deployment = self.store.create_deployment(workspace_id, name, pinned, actor=actor)
            with self._lock:  # in memory only: a restarted server resumes without batching
                if batching is not None and batching.enabled:
                    self._batching[key] = batching
                else:
                    self._batching.pop(key, None)
        self.changes.notify()
        self._pool.submit(self._start_in_background, deployment, versions)
        return deployment

    # -- changes of a live deployment (UpdateDeployment, SetTrafficSplit, SetShadow) -------------------

    def update(
        self,
        workspace_id: int,
        name: str,
        steps: Sequence[DeploymentStep],
        *,
        reason: str,
        actor: str = "",
        batching: Batching | None = None,
        wait: bool = True,
    ) -> Deployment:
        """Moves a RUNNING deployment to `steps`: loads and warms them while the old steps serve, swaps
        the route at once (streams already open finish on the old steps, which are unloaded once they
        drained, at most `drain_seconds` later) and records the revision with `reason`. A split is
        cleared, a shadow kept. If the new steps cannot load, the old keep serving and the deployment's
        status_reason (and the revision) say why. `wait=False` returns at once with the change pending."""
        return self._change(
            workspace_id,
            name,
            lambda current: Plan(
                self._pins(workspace_id, "steps", steps, required=True), (), 0, current.shadow
            ),
            reason=reason,
            actor=actor,
            batching=batching,
            wait=wait,
        )

    def set_split(
        self,
        workspace_id: int,
        name: str,
        canary: Sequence[DeploymentStep],
        percent: int,
        *,
        reason: str,
        actor: str = "",
        wait: bool = True,
    ) -> Deployment:
        """Sends `percent` percent of new streams to the `canary` pipeline (none and 0: no split)."""
        if not 0 <= percent <= 100:
            raise InvalidArgument(f"canary_percent must be 0 to 100, got {percent}")
        if percent and not canary:
            raise InvalidArgument("canary_steps: give the canary's steps for a canary_percent above 0")

        def split(current: Deployment) -> Plan:
            pins = self._pins(workspace_id, "canary_steps", canary, required=False)
            return Plan(current.steps, pins, percent if pins else 0, current.shadow)

        return self._change(
            workspace_id,
            name,
            split,
            reason=reason,
            actor=actor,
            wait=wait,
        )

    def set_shadow(
        self,
        workspace_id: int,
        name: str,
        shadow: Sequence[DeploymentStep],
        *,
        reason: str,
        actor: str = "",
        wait: bool = True,
    ) -> Deployment:
        """Mirrors requests to the `shadow` pipeline (none: no shadow)."""
        return self._change(
            workspace_id,
            name,
            lambda current: Plan(
                current.steps,
                current.canary,
                current.canary_percent,
                self._pins(workspace_id, "shadow_steps", shadow, required=False),
            ),
            reason=reason,
            actor=actor,
            wait=wait,
        )

    def revisions(self, workspace_id: int, name: str, limit: int, after: int = 0) -> list[Revision]:
        return self.store.list_revisions(workspace_id, name, limit, after)

    def shadow_stats(self, workspace_id: int, name: str) -> ShadowStats | None:
        live = self.live(workspace_id, name)
        return None if live is None or live.mirror is None else live.mirror.stats()

    def undeploy(self, workspace_id: int, name: str) -> Deployment:
        key = route_key(workspace_id, name)
        with self._name_lock(key):
            existing = self.store.get_deployment(workspace_id, name)
            self._stop(key)
            self.store.delete_follow(existing.id)  # a stopped deployment follows nothing
            stopped = self.store.update_deployment(workspace_id, name, DeploymentStatus.STOPPED)
        self.changes.notify()
        return stopped

    def watch(self, workspace_id: int, name: str, active: Callable[[], bool]) -> Iterator[Deployment]:
        """The deployment's current state, then each change, until RUNNING, FAILED or STOPPED with no
        change pending."""
        return self.changes.watch(
            lambda: self.store.get_deployment(workspace_id, name),
            lambda d: (d.id, d.status, d.status_reason, d.revision, d.pending_revision),
            lambda d: d.status in SETTLED and not d.pending_revision,
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
        return self._live_at(route_key(workspace_id, name))

    def _live_at(self, key: str) -> Live | None:
        with self._lock:
            return self._live.get(key)

    def resume(self) -> None:
        """At start-up: bring back what was running before the server stopped (with its split and
        shadow), and retry what FAILED by a fault (a runtime's port taken, a crash): those may well start
        now. A deployment whose model failed stays FAILED. A change the stop interrupted is FAILED."""
        for deployment in self.store.list_deployments():
            if not _resumes(self.store, deployment):
                continue
            workspace_id, name = deployment.workspace_id, deployment.name
            key = route_key(workspace_id, name)
            try:
                with self._name_lock(key):
                    if deployment.pending_revision:
                        deployment = self.store.fail_change(
                            workspace_id, name, deployment.pending_revision, "interrupted by a server restart"
                        )
                    if deployment.status is DeploymentStatus.FAILED:
                        log.info("retrying deployment %s (%s)", key, deployment.status_reason)
                        deployment = self.store.update_deployment(
                            workspace_id, name, DeploymentStatus.DEPLOYING
                        )
                    versions = [self.store.get_model_version(s.model_id, s.version) for s in deployment.steps]
                    self._start(deployment, versions)
            finally:
                if self._live_at(key) is None:  # it did not come back: NOT_FOUND from now on
                    self.router.forget(key)
        self.changes.notify()

    def runtime_failed(self, key: str, reason: str, by_fault: bool) -> None:
        """The backend gave up on a step's model (`by_fault`: its server could not start, not the model's
        own load error): the deployment cannot serve any more, unless the model was its shadow's (whose
        batches then fail, counted) or one being retired."""
        tagged, _, index = key.rpartition(".")
        route = tagged.partition("@")[0]
        workspace_id, name = split_key(route)
        with self._name_lock(route):
            deployment = self.store.get_deployment(workspace_id, name)
            live = self._live_at(route)
            if deployment.status is not DeploymentStatus.RUNNING or live is None:
                return
            serving = [x for x in (live.primary, live.canary) if x is not None]
            if not any(key == k for loaded in serving for _, k in loaded.keys):
                log.warning("runtime of %s (shadow or retired) gave up: %s", key, reason)
                return
            self._stop(route)
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
                live = self._live_at(name)
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
                    self._stop(name)
        self.changes.notify()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # queued ones stay DEPLOYING: resumed at start
        with self._lock:
            lives = list(self._live.items())
        for name, live in lives:
            self.router.remove(name)
            if live.mirror is not None:  # not waited for long: a stopping server bounds its stop
                live.mirror.close(timeout=0.2)
        self.backend.close()

    # -- internals --------------------------------------------------------------------------------------

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks[name]

    def _pins(
        self, workspace_id: int, what: str, steps: Sequence[DeploymentStep], *, required: bool
    ) -> tuple[DeploymentStep, ...]:
        """A change's steps, checked as Deploy checks its own: ready versions of the workspace's own or
        public models."""
        if required and not steps:
            raise InvalidArgument(f"{what}: give at least one step")
        versions = [self._ready_version(workspace_id, s) for s in steps]
        return tuple(DeploymentStep(v.model_id, v.version) for v in versions)

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

    def _change(
        self,
        workspace_id: int,
        name: str,
        make: Change,
        *,
        reason: str,
        actor: str,
        batching: Batching | None = None,
        wait: bool,
    ) -> Deployment:
        current = self.store.get_deployment(workspace_id, name)  # NOT_FOUND first, then the steps
        plan = make(current)
        pending = self.store.begin_change(workspace_id, name, plan, actor=actor, reason=reason)
        self.changes.notify()
        key = route_key(workspace_id, name)
        if wait:  # in the caller's thread: a caller on the deploy pool itself must not wait for the pool
            self._apply(key, pending.pending_revision, plan, batching)
            return self.store.get_deployment(workspace_id, name)
        self._pool.submit(self._apply, key, pending.pending_revision, plan, batching)
        return pending

    def _apply(self, name: str, revision: int, plan: Plan, batching: Batching | None) -> None:
        try:
            with self._name_lock(name):
                self._apply_locked(name, revision, plan, batching)
        except Exception:  # the store itself failed; the pending revision is failed at the next start
            log.exception("changing deployment %s to revision %d failed", name, revision)
        finally:
            self.changes.notify()

    def _apply_locked(self, name: str, revision: int, plan: Plan, batching: Batching | None) -> None:
        """Applies a pending change of the deployment whose route key is `name`."""
        workspace_id, bare = split_key(name)
        current = self.store.get_deployment(workspace_id, bare)
        live = self._live_at(name)
        if (
            current.status is not DeploymentStatus.RUNNING
            or current.pending_revision != revision
            or live is None
        ):
            self.store.fail_change(workspace_id, bare, revision, f"the deployment is {current.status.value}")
            return
        if batching is not None:
            with self._lock:
                if batching.enabled:
                    self._batching[name] = batching
                else:
                    self._batching.pop(name, None)
        # A pipeline already loaded with the same steps is reused as it is (promoting a canary, changing
        # only the percentage), unless the batching changed: its steps carry the old one.
        reusable = {} if batching is not None else {x.pins: x for x in live.loaded()}
        fresh: list[Loaded] = []

        def loaded(pins: tuple[DeploymentStep, ...], tag: str) -> Loaded:
            if pins in reusable:
                return reusable[pins]
            versions = [self.store.get_model_version(s.model_id, s.version) for s in pins]
            made = self._load(name, tag, versions)
            fresh.append(made)
            self._warm(made.route(name, revision, tag))
            return made

        now: Live | None = None
        try:
            primary = loaded(plan.steps, f"r{revision}")
            canary = loaded(plan.canary, f"r{revision}c") if plan.canary else None
            shadow = loaded(plan.shadow, f"r{revision}s") if plan.shadow else None
            mirror = live.mirror if shadow is not None and shadow is live.shadow else None
            if shadow is not None and mirror is None:
                mirror = Shadow(bare, shadow.route(name, revision, "shadow"), self.observer.shadow_batch)
            now = Live.of(name, revision, primary, canary, plan.canary_percent, shadow, mirror)
            # Swapped before it is recorded: whoever sees the revision live finds it served.
            self._serve(name, now)
            deployment = self.store.finish_change(
                workspace_id,
                bare,
                revision,
                plan,
                [placement(s) for s in primary.steps],
                [placement(s) for s in canary.steps] if canary else [],
                [placement(s) for s in shadow.steps] if shadow else [],
            )
        except Exception as exc:
            if now is not None:  # recording failed after the swap: serve what the store says again
                self._serve(name, live)
                if now.mirror is not None and now.mirror is not live.mirror:
                    now.mirror.close(timeout=1)
            for made in fresh:
                self._unload(made)
            if not isinstance(exc, (ModelLoadError, FlightlineError)):
                log.exception("changing deployment %s to revision %d failed", name, revision)
            failed = self.store.fail_change(workspace_id, bare, revision, str(exc))
            self.observer.deployment_changed(failed, revision, "failed", str(exc))
            return
        if live.mirror is not None and live.mirror is not now.mirror:
            live.mirror.close(timeout=1)
        self._retire([x for x in live.loaded() if all(x is not y for y in now.loaded())])
        self.observer.deployment_changed(deployment, revision, "live")

    def _serve(self, name: str, live: Live) -> None:
        """Swaps what the front door serves for `name` in one step."""
        with self._lock:
            self._live[name] = live
        self.router.put(
            live.route, canary=live.canary_route, canary_percent=live.canary_percent, shadow=live.mirror
        )

    def _warm(self, route: Route) -> None:
        """One generated batch through a new route before it serves: connections to its runtime servers
        are made and every step has run once. A step that cannot be reached fails the change; a model that
        rejects made-up values is only logged (it may serve real ones)."""
        if not route.input_schema.names:
            return
        streams = [step.open() for step in route.steps]
        try:
            data = sample_batch(route.input_schema)
            for stream in streams:
                data = stream.run(data)
        except Unavailable:
            raise
        except Exception as error:
            log.warning("warm-up batch of %s failed (it serves anyway): %s", route.name, error)
        finally:
            for stream in streams:
                stream.close()

    def _retire(self, retired: Sequence[Loaded]) -> None:
        """Unloads pipelines no longer served once the streams still on them ended (bounded wait)."""
        if not retired:
            return

        def drain() -> None:
            for loaded in retired:
                if not loaded.usage.wait_idle(self.drain_seconds):
                    log.warning(
                        "%d streams still on retired steps after %gs: unloading anyway",
                        loaded.usage.streams,
                        self.drain_seconds,
                    )
                self._unload(loaded)

        threading.Thread(target=drain, name="drain", daemon=True).start()

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
        workspace_id = deployment.workspace_id
        name = route_key(workspace_id, deployment.name)
        try:
            primary = self._load(name, "", versions)
        except Exception as exc:
            self._stop(name)
            if not isinstance(exc, (ModelLoadError, FlightlineError)):
                log.exception("deploying %s failed", name)
            return self.store.update_deployment(
                workspace_id, deployment.name, DeploymentStatus.FAILED, str(exc), by_fault=_by_fault(exc)
            )
        # A resumed split or shadow that cannot load now leaves the deployment serving its own steps;
        # the record keeps the plan, so the next start tries again.
        notes: list[str] = []
        canary = self._variant(name, "c", deployment.canary, "canary", notes)
        shadow = self._variant(name, "s", deployment.shadow, "shadow", notes)
        mirror = None
        if shadow is not None:
            mirror = Shadow(
                deployment.name, shadow.route(name, deployment.revision, "shadow"), self.observer.shadow_batch
            )
        live = Live.of(name, deployment.revision, primary, canary, deployment.canary_percent, shadow, mirror)
        self._serve(name, live)
        # Recorded for front doors in other processes (dataplane/discovery.py), which route the same way.
        running = self.store.update_deployment(
            workspace_id,
            deployment.name,
            DeploymentStatus.RUNNING,
            "; ".join(notes),
            placements=[placement(step) for step in primary.steps],
        )
        if canary is not None or shadow is not None:
            running = self.store.set_variant_placements(
                workspace_id,
                deployment.name,
                [placement(s) for s in canary.steps] if canary else [],
                [placement(s) for s in shadow.steps] if shadow else [],
            )
        return running

    def _variant(
        self, name: str, tag: str, pins: Sequence[DeploymentStep], what: str, notes: list[str]
    ) -> Loaded | None:
        if not pins:
            return None
        try:
            return self._load(name, tag, [self.store.get_model_version(s.model_id, s.version) for s in pins])
        except Exception as exc:
            log.warning("the %s of deployment %s did not load: %s", what, name, exc)
            notes.append(f"the {what} did not load: {exc}")
            return None

    def _load(self, name: str, tag: str, versions: Sequence[ModelVersion]) -> Loaded:
        """Loads a pipeline for the deployment whose route key is `name`; its runtime-server models are
        keyed `<name>.<index>` (the deploy's) or `<name>@<tag>.<index>` (a change's), so old and new are
        loaded side by side."""
        keys: list[tuple[ServerGroup, str]] = []
        try:
            steps = tuple(self._step(name, tag, i, v, keys) for i, v in enumerate(versions))
        except BaseException:
            for group, key in keys:
                self._unload_key(group, key)
            raise
        pins = tuple(DeploymentStep(v.model_id, v.version) for v in versions)
        return Loaded(pins, steps, tuple(v.runtime for v in versions), tuple(keys))

    def _step(
        self, name: str, tag: str, index: int, version: ModelVersion, keys: list[tuple[ServerGroup, str]]
    ) -> Step:
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
        key = f"{name}.{index}" if not tag else f"{name}@{tag}.{index}"
        group = server_group(version, split_key(name)[0], environment)
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
        keys.append((group, key))
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

    def _unload(self, loaded: Loaded) -> None:
        for step in loaded.steps:
            if isinstance(step, BatchingStep):
                step.close()
        for group, key in loaded.keys:
            self._unload_key(group, key)

    def _unload_key(self, group: ServerGroup, key: str) -> None:
        with self._lock:
            placed = self._placed.pop(key, None)
        if placed is not None:
            self.backend.unload(group, key)

    def _stop(self, name: str) -> None:
        """Stops serving `name` and unloads everything loaded for it (retiring pipelines too)."""
        self.router.remove(name)
        with self._lock:
            live = self._live.pop(name, None)
            self._batching.pop(name, None)
            leftovers = [(g, k) for k, g in self._placed.items() if k.startswith((f"{name}.", f"{name}@"))]
        if live is not None:
            if live.mirror is not None:
                live.mirror.close(timeout=1)
            for loaded in live.loaded():
                self._unload(loaded)
        for group, key in leftovers:
            self._unload_key(group, key)


def resumable(store: MetadataStore) -> list[str]:
    """The route keys of what `DeploymentService.resume` will bring back at start-up: the front door answers
    UNAVAILABLE (retry) for them until they are routed, not NOT_FOUND."""
    return [route_key(d.workspace_id, d.name) for d in store.list_deployments() if _resumes(store, d)]


def _resumes(store: MetadataStore, deployment: Deployment) -> bool:
    if deployment.owner != store.owner:  # another control plane's: it resumes its own
        return False
    retry = deployment.status is DeploymentStatus.FAILED and deployment.failed_by_fault
    return retry or deployment.status in (DeploymentStatus.RUNNING, DeploymentStatus.DEPLOYING)


def _by_fault(error: Exception) -> bool:
    """Whether a failed start may succeed later: a fault (a runtime that could not start, an unreachable
    store, a bug) rather than the model (a load error) or the request (e.g. a missing version)."""
    if isinstance(error, ModelLoadError):
        return False
    return isinstance(error, Unavailable) or not isinstance(error, FlightlineError)
