"""Route discovery for front doors that run apart from the control plane (role "frontdoor").

The control plane that owns a deployment records, when it becomes RUNNING, where each step runs
(`StepPlacement`: inside the front door, or on a runtime server at a Flight location serving a model
key). `RouteSync` polls one counter in the metadata store (`route_state.version`, raised in the same
transaction as every change of a deployment) every `period` seconds; only when it moved does it read the
deployments, build routes for RUNNING ones that are new or changed, and remove the others. So any
number of front doors serve exactly the RUNNING deployments, each a poll period behind at most.

A front-door step loads its model version here, from the artifact store by sha256; a remote step only
dials the runtime server. A deployment's canary and shadow are routed the same way from their recorded
placements (a shadow here records its own counts). A deployment whose route cannot be built yet (its
runtime server not reachable, a store fault) is retried at the next poll, UNAVAILABLE meanwhile. `ready`
turns true once one pass has routed every RUNNING deployment, and stays true (the front door's
`healthcheck` waits for it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from flightline.runtimes import load_runtime
from flightline.runtimes.base import ModelSpec
from flightline.runtimes.host import Host
from flightline.runtimes.plugins import plugin
from flightline.server.dataplane.routes import (
    LocalStep,
    RemoteStep,
    Route,
    Router,
    Step,
    answered_by,
    route_key,
)
from flightline.server.dataplane.shadow import Record, Shadow
from flightline.server.services.names import parse_schema
from flightline.server.store.artifacts import ArtifactStore
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import (
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    ModelVersion,
    StepPlacement,
)

log = logging.getLogger(__name__)

Signature = tuple[object, ...]


def placement(step: Step) -> StepPlacement:
    """What a front door elsewhere needs to run `step` as the owner's own front door does."""
    if isinstance(step, LocalStep):
        return StepPlacement(in_front_door=True)
    return StepPlacement(
        in_front_door=False, location=step.location or "", model_key=_key(step), secret=_secret(step)
    )


def _key(step: Step) -> str:
    # Multi-model runtime servers address a model by key; a one-model runtime server has none.
    key = getattr(step, "key", "")
    return key if isinstance(key, str) else ""


def _secret(step: Step) -> str:
    inner = getattr(step, "step", step)  # a BatchingStep wraps the remote step
    return inner.secret if isinstance(inner, RemoteStep) else ""


def _remote_step(location: str, key: str, secret: str = "") -> Step:
    """The step for a model served remotely: `key` addresses it on its runtime server."""
    return RemoteStep(location, key, secret=secret)


def model_spec(version: ModelVersion, artifact: Path) -> ModelSpec:
    return ModelSpec(
        artifact=artifact,
        framework=version.framework,
        input_schema=parse_schema("input_schema", version.input_schema),
        output_schema=parse_schema("output_schema", version.output_schema),
        options=dict(version.conversion.options),
    )


class Poller:
    """Calls `work` every `period` seconds on a thread of its own until closed; a failing call is logged
    and the next one comes as usual (the metadata store may be down for a while)."""

    def __init__(self, work: Callable[[], object], period: float, name: str) -> None:
        self._work = work
        self._period = period
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._work()
            except Exception:
                log.exception("%s failed", self._thread.name)
            self._stopping.wait(self._period)


def on_route_change(store: MetadataStore, work: Callable[[], object]) -> Callable[[], None]:
    """A poll that runs `work` only when the route counter moved since the last poll."""
    seen = [store.route_version()]

    def poll() -> None:
        version = store.route_version()
        if version != seen[0]:
            work()
            seen[0] = version

    return poll


class RouteSync:
    def __init__(
        self,
        store: MetadataStore,
        artifacts: ArtifactStore,
        router: Router,
        cache_dir: Path,
        *,
        period: float = 1.0,
        record: Record | None = None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.router = router
        self.cache_dir = cache_dir
        self._record: Record = record or (lambda *_: None)
        self._routed: dict[str, Signature] = {}
        self._shadows: dict[str, Shadow] = {}
        self._seen = -1  # the route_version of the last complete pass
        self._ready = threading.Event()
        self._poller = Poller(self.sync, period, "route-sync")

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> RouteSync:
        self._poller.start()
        return self

    def close(self) -> None:
        self._poller.close()
        for name in list(self._routed):
            self.router.remove(name)
        self._routed.clear()
        for shadow in self._shadows.values():
            shadow.close(timeout=1)
        self._shadows.clear()

    def sync(self) -> bool:
        """One pass; True when every RUNNING deployment is routed."""
        version = self.store.route_version()
        if version == self._seen:
            return True
        running = {
            route_key(d.workspace_id, d.name): d
            for d in self.store.list_deployments()
            if d.status is DeploymentStatus.RUNNING
        }
        for name in [n for n in self._routed if n not in running]:
            self.router.remove(name)
            del self._routed[name]
            self._drop_shadow(name)
            log.info("route %s removed", name)
        complete = True
        for name, deployment in running.items():
            signature = _signature(deployment)
            if self._routed.get(name) == signature:
                continue
            if not deployment.placements:  # RUNNING from before placements: its owner records them
                self.router.expect([name])
                complete = False
                continue
            try:
                route = self._route(deployment, deployment.steps, deployment.placements, "primary")
                canary = shadow = None
                if deployment.canary and deployment.canary_placements:
                    canary = self._route(
                        deployment, deployment.canary, deployment.canary_placements, "canary"
                    )
                if deployment.shadow and deployment.shadow_placements:
                    shadow = self._route(
                        deployment, deployment.shadow, deployment.shadow_placements, "shadow"
                    )
            except Exception as exc:  # retried at the next poll; the front door answers UNAVAILABLE till then
                log.warning("cannot route deployment %s yet: %s", name, exc)
                self.router.expect([name])
                complete = False
                continue
            mirror = None if shadow is None else Shadow(deployment.name, shadow, self._record)
            self.router.put(route, canary=canary, canary_percent=deployment.canary_percent, shadow=mirror)
            self._drop_shadow(name)
            if mirror is not None:
                self._shadows[name] = mirror
            self._routed[name] = signature
            log.info("route %s updated", name)
        if complete:
            for name in self.router.expected():
                if name not in running:  # expected at start, not running after all
                    self.router.forget(name)
            self._seen = version
            self._ready.set()
        return complete

    def _drop_shadow(self, name: str) -> None:
        shadow = self._shadows.pop(name, None)
        if shadow is not None:
            shadow.close(timeout=1)

    def _route(
        self,
        deployment: Deployment,
        pins: Sequence[DeploymentStep],
        placements: Sequence[StepPlacement],
        variant: str,
    ) -> Route:
        steps = [
            self._step(self.store.get_model_version(s.model_id, s.version), placed)
            for s, placed in zip(pins, placements, strict=True)
        ]
        tag = answered_by(deployment.revision, variant, ((s.model_id, s.version) for s in pins))
        return Route.of(route_key(deployment.workspace_id, deployment.name), steps, answered_by=tag)

    def _step(self, version: ModelVersion, placed: StepPlacement) -> Step:
        if not placed.in_front_door:
            return _remote_step(placed.location, placed.model_key, placed.secret)
        if plugin(version.runtime).unpacks:
            raise ValueError(f"runtime {version.runtime} unpacks archives: not served inside a front door")
        artifact = self.artifacts.local_path(version.sha256, self.cache_dir)
        return LocalStep(Host(load_runtime(version.runtime, model_spec(version, artifact))))


def _signature(deployment: Deployment) -> Signature:
    # A replaced deployment (same name, new id), a new revision or moved steps must be routed afresh.
    d = deployment
    return (
        d.id,
        d.revision,
        d.steps,
        d.placements,
        d.canary,
        d.canary_percent,
        d.canary_placements,
        d.shadow,
        d.shadow_placements,
    )
