"""Workspaces group registries, models and deployments."""

from __future__ import annotations

from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import Workspace


class WorkspaceService:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def create(self, name: str) -> Workspace:
        return self.store.create_workspace(name)

    def get(self, workspace_id: int) -> Workspace:
        return self.store.get_workspace(workspace_id)

    def page(self, limit: int, after_id: int) -> list[Workspace]:
        return self.store.list_workspaces(limit, after_id)
