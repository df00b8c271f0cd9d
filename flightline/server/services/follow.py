"""Deployments that follow a registry alias (`models:/<name>@<alias>`): when the alias moves, the version it
now names is uploaded (pinned to that version, like any upload of an alias), prepared, and swapped into the
deployment with `DeploymentService.update` (load + warm the new steps, swap the route, drain the old).
If the new version fails to prepare or to load, the old one keeps serving and the follow records why;
that version is not tried again until the alias moves once more.

Moves are found by polling every `period` seconds (`FLIGHTLINE_FOLLOW_POLL_SECONDS`): one
`registered-models/alias` GET per followed deployment. MLflow 3 also offers model-registry webhooks
(`model_version_alias.created`), but they need an HTTP endpoint the MLflow server can reach and sign
for; `check()` is what such a receiver would call, and polling stays the guarantee.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from flightline.server.errors import FailedPrecondition, FlightlineError, InvalidArgument, NotFound
from flightline.server.services.models import TERMINAL, ModelService
from flightline.server.services.registries import RegistryService
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import (
    Conversion,
    Deployment,
    DeploymentStatus,
    DeploymentStep,
    Follow,
    ModelStatus,
    ModelVersion,
)
from flightline.server.store.tables import utc_now

log = logging.getLogger(__name__)

ACTOR = "alias-follower"
PREPARE_TIMEOUT_S = 1800.0


class Updater(Protocol):
    """What the follower needs of DeploymentService: its `update` (tests give a recording one)."""

    def update(
        self,
        workspace_id: int,
        name: str,
        steps: Sequence[DeploymentStep],
        *,
        reason: str,
        actor: str = "",
    ) -> Deployment: ...


class AliasFollower:
    def __init__(
        self,
        store: MetadataStore,
        models: ModelService,
        registries: RegistryService,
        updater: Updater,
        *,
        period: float = 30.0,
    ) -> None:
        self.store = store
        self.models = models
        self.registries = registries
        self.updater = updater
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (the poller, or a webhook receiver)

    def follow(
        self,
        workspace_id: int,
        name: str,
        registry_id: str,
        uri: str,
        conversion: Conversion | None = None,
    ) -> Follow:
        """Makes deployment `name` follow `uri` (models:/<name>@<alias>). Its current version counts as
        followed when it was uploaded from that alias's model; otherwise the next check swaps in the
        version the alias names. New versions are uploaded with `conversion`, by default the deployed
        version's framework, input schema and options: a version whose signature does not fit the
        schema clients use is refused (its own requirements are read from it, not carried over)."""
        deployment = self.store.get_deployment(workspace_id, name)  # NotFound names it
        if len(deployment.steps) != 1:
            raise InvalidArgument("only a deployment of one step can follow an alias")
        reference = self.registries.resolve_model(registry_id, workspace_id, uri)
        if not reference.alias:
            raise InvalidArgument(f"uri {uri!r} names no alias: expected models:/<name>@<alias>")
        step = deployment.steps[0]
        current = self.store.get_model_version(step.model_id, step.version)
        served = current.origin.version if current.origin and current.origin.name == reference.name else ""
        asked = current.conversion
        replayed = conversion or Conversion(
            framework=asked.framework,
            input_schema=asked.input_schema,
            output_schema=asked.output_schema,
            options=dict(asked.options),
        )
        return self.store.put_follow(
            Follow(
                deployment.id,
                registry_id,
                uri,
                current.model_name,
                replayed,
                served,
                "",
                utc_now(),
            )
        )

    def stop(self, workspace_id: int, name: str) -> Deployment:
        """Stops deployment `name` following its alias; it keeps serving what it serves."""
        deployment = self.store.get_deployment(workspace_id, name)  # NotFound names it
        # Not under the pass's lock (a pass may prepare a version for minutes): a pass checks that the
        # follow still stands right before it swaps a version in.
        if not self.store.delete_follow(deployment.id):
            raise FailedPrecondition(f"deployment {name!r} follows no alias")
        log.info("follow of %s stopped", name)
        return deployment

    def get(self, deployment_id: int) -> Follow | None:
        return self.store.get_follow(deployment_id)

    def by_deployment(self) -> dict[int, Follow]:
        return {follow.deployment_id: follow for follow in self.store.list_follows()}

    def check(self) -> list[str]:
        """One pass over every follow; returns what it did, one line each (also logged)."""
        with self._lock:
            running = {d.id: d for d in self.store.list_deployments() if d.status == DeploymentStatus.RUNNING}
            done = []
            for follow in self.store.list_follows():
                deployment = running.get(follow.deployment_id)
                if deployment is not None:
                    line = self._check_one(follow, deployment)
                    if line:
                        log.info("follow of %s: %s", deployment.name, line)
                        done.append(line)
            return done

    def start(self) -> None:
        if self.period <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="alias-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception:  # a pass must never end the poller; the next period tries again
                log.exception("checking followed aliases failed")

    def _check_one(self, follow: Follow, deployment: Deployment) -> str:
        try:
            reference = self.registries.resolve_model(follow.registry_id, deployment.workspace_id, follow.uri)
        except Exception as exc:  # the registry is down or the alias was deleted: keep serving, say so
            reason = f"cannot resolve {follow.uri}: {exc}"
            if reason != follow.status_reason:
                self._record(follow.deployment_id, status_reason=reason)
            return ""
        moved_to = reference.version
        if moved_to == follow.followed_version or follow.status_reason.startswith(_tried(moved_to)):
            return ""
        what = f"alias {reference.alias} of {reference.name} moved to version {moved_to}"
        try:
            version = self.models.upload_from_registry(
                registry_id=follow.registry_id,
                path=reference.uri,
                workspace_id=deployment.workspace_id,
                name=follow.model_name,
                visibility="private",
                conversion=follow.conversion,
            )
            prepared = self._prepared(version.model_id, version.version)
            if prepared.status != ModelStatus.READY:
                raise _NotFollowed(f"it failed to prepare: {prepared.status_reason}")
            step = DeploymentStep(prepared.model_id, prepared.version)
            if self.store.get_follow(follow.deployment_id) is None:
                return f"{what}: not followed (the follow was stopped)"
            self.updater.update(deployment.workspace_id, deployment.name, [step], reason=what, actor=ACTOR)
        except Exception as exc:  # the old version keeps serving; the follow says why
            # Our own errors carry messages meant for people; anything else is named, its detail logged.
            known = isinstance(exc, _NotFollowed | FlightlineError)
            why = str(exc) if known else f"internal error: {type(exc).__name__}"
            if not isinstance(exc, _NotFollowed):
                log.warning("following %s for %s failed", what, deployment.name, exc_info=exc)
            self._record(follow.deployment_id, status_reason=f"{_tried(moved_to)}{why}")
            return f"{what}: not followed ({why})"
        self._record(follow.deployment_id, followed_version=moved_to, status_reason="")
        return f"{what}: serving it"

    def _record(self, deployment_id: int, **fields: str) -> None:
        """Where the follow stands now, unless it was stopped meanwhile."""
        with contextlib.suppress(NotFound):
            self.store.update_follow(deployment_id, **fields)

    def _prepared(self, model_id: int, number: int) -> ModelVersion:
        deadline = time.monotonic() + PREPARE_TIMEOUT_S
        while True:
            version = self.store.get_model_version(model_id, number)
            if version.status in TERMINAL or time.monotonic() > deadline or self._stop.is_set():
                return version
            self._stop.wait(0.2)


class _NotFollowed(Exception):
    """The new version cannot serve; the message says why, in our words."""


def _tried(version: str) -> str:
    return f"version {version} was not followed: "
