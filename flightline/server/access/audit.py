"""The audit trail: who did what to which resource, and how it ended, in the `audit_events` table and as
one `flightline.audit` log line. A resource is named by its ids only (workspace, model, registry,
deployment name, user, token id): never a token's secret, never a payload."""

from __future__ import annotations

import logging
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
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

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
        try:
            self.store.add_audit(
                user_id=user_id,
                actor=actor,
                action=action,
                resource=resource,
                workspace_id=workspace_id,
                outcome=outcome,
            )
        except Exception:  # the call's outcome stands; the log line above keeps the record
            log.exception("could not write the audit event of %s", action)
