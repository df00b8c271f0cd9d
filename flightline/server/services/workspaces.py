"""Workspaces group registries, models and deployments."""

from __future__ import annotations

from collections.abc import Collection

from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import Workspace


class WorkspaceService:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def create(self, name: str, admin_id: int | None = None) -> Workspace:
        """A new workspace; `admin_id` (its creator) becomes its admin."""
        workspace = self.store.create_workspace(name)
        if admin_id is not None:
            self.store.set_member(workspace.id, admin_id, "admin")
        return workspace

    def get(self, workspace_id: int) -> Workspace:
        return self.store.get_workspace(workspace_id)

    def page(self, limit: int, after_id: int, only: Collection[int] | None = None) -> list[Workspace]:
        return self.store.list_workspaces(limit, after_id, only)
