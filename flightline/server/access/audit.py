"""The audit trail: who did what to which resource, and how it ended, in the `audit_events` table and as
one `flightline.audit` log line. A resource is named by its ids only (workspace, model, registry,
deployment name, user, token id): never a token's secret, never a payload."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Final

from flightline.server.access.authn import Identity
from flightline.server.store.metadata import MetadataStore

log = logging.getLogger("flightline.audit")

# Request fields that name a resource; nothing else of a request is ever recorded.
NAMING_FIELDS: Final = ("model_id", "registry_id", "name", "user_id", "token_id", "filename")


def resource_of(request: Any) -> str:
    """`field=value` pairs of the request's naming fields (and of its `metadata`, for uploads)."""
    if request is None:
        return ""
    parts: list[str] = []
    for message in (request, getattr(request, "metadata", None)):
        descriptor = getattr(message, "DESCRIPTOR", None)
        if descriptor is None:
            continue
        for name in NAMING_FIELDS:
            if name in descriptor.fields_by_name:
                value = getattr(message, name)
                if value:
                    parts.append(f"{name}={value}")
    return " ".join(parts)[:1000]


class Recorder:
    """Logs each event at once and writes it to the table from a thread of its own: a call never waits
    for the audit row (the database may be busy with another writer: the call's own outcome, e.g. its
    UNAVAILABLE within its deadline, must not wait behind it). `flush` waits for the rows written so far."""

    def __init__(self, store: MetadataStore, capacity: int = 10_000) -> None:
        self.store = store
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._writer = threading.Thread(target=self._write, name="audit-writer", daemon=True)
        self._writer.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """True once every event recorded before the call is in the table."""
        done = threading.Event()
        self._queue.put({"_flushed": done})
        return done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)

    def _write(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            flushed = event.pop("_flushed", None)
            if flushed is not None:
                flushed.set()
                continue
            try:
                self.store.add_audit(**event)
            except Exception:  # the log line keeps the record
                log.exception("could not write the audit event of %s", event.get("action"))

    def record(
        self, identity: Identity | None, action: str, resource: str, workspace_id: int | None, outcome: str
    ) -> None:
        actor = identity.name if identity is not None else "(unauthenticated)"
        user_id = identity.user_id if identity is not None else None
        log.info(
            "audit %s by %s on %s: %s",
            action,
            actor,
            resource or "-",
            outcome,
            extra={
                "actor": actor,
                "user_id": user_id,
                "action": action,
                "resource": resource,
                "workspace_id": workspace_id,
                "outcome": outcome,
            },
        )
        event = {
            "user_id": user_id,
            "actor": actor,
            "action": action,
            "resource": resource,
            "workspace_id": workspace_id,
            "outcome": outcome,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:  # a database that is down for long: the log line keeps the record
            log.error("audit queue full; event of %s kept in the log only", action)
