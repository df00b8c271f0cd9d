"""Registry connections: stored in the metadata store, browsed through the MLflow REST client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx

from flightline.server.errors import InvalidArgument, NotFound
from flightline.server.registries.mlflow import (
    ArtifactInfo,
    MlflowRegistryClient,
    ModelReference,
    RegisteredModel,
    RegisteredModelVersion,
)
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import Registry


class RegistryService:
    def __init__(
        self, store: MetadataStore, *, timeout: float | httpx.Timeout = 30.0, retries: int = 3
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.retries = retries

    def create(self, workspace_id: int, name: str, url: str, token: str) -> Registry:
        if not name.strip():
            raise InvalidArgument("registry name is empty")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidArgument(
                f"registry url {url!r} is not an http(s) URL, e.g. https://adb-1.2.azuredatabricks.net"
            )
        if parsed.username or parsed.password:
            # It would be echoed by GetRegistry and in error messages: credentials belong in `token`.
            raise InvalidArgument("registry url must not carry credentials; pass the token in `token`")
        return self.store.create_registry(workspace_id, name, url.rstrip("/"), token)

    def attach(self, registry_id: str, workspace_id: int) -> None:
        self.store.attach_registry(registry_id, workspace_id)

    def detach(self, registry_id: str, workspace_id: int) -> None:
        self.store.detach_registry(registry_id, workspace_id)

    def get(self, registry_id: str) -> Registry:
        return self.store.get_registry(registry_id)

    def in_workspace(self, workspace_id: int, limit: int, after_id: str = "") -> list[Registry]:
        return self.store.list_registries(workspace_id, limit, after_id)

    def list_models(
        self, registry_id: str, page_size: int, page_token: str
    ) -> tuple[list[RegisteredModel], str]:
        with self._client(registry_id) as client:
            return client.list_models(page_size, page_token)

    def list_versions(
        self, registry_id: str, name: str, page_size: int, page_token: str
    ) -> tuple[list[RegisteredModelVersion], str]:
        with self._client(registry_id) as client:
            return client.list_versions(name, page_size, page_token)

    def list_artifacts(self, registry_id: str, name: str, version: str) -> list[ArtifactInfo]:
        with self._client(registry_id) as client:
            return client.list_artifacts(name, version)

    def resolve_model(self, registry_id: str, workspace_id: int, uri: str) -> ModelReference:
        """Pins a models:/ URI (version, alias or logged model) for use in `workspace_id`."""
        with self._client(registry_id, workspace_id) as client:
            return client.resolve_model(uri)

    def download(
        self,
        registry_id: str,
        workspace_id: int,
        path: str,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Downloads `path` for use in `workspace_id`, which the registry must be attached to."""
        dest.mkdir(parents=True, exist_ok=True)
        with self._client(registry_id, workspace_id) as client:
            return client.download(path, dest, progress)

    @contextmanager
    def _client(self, registry_id: str, workspace_id: int | None = None) -> Iterator[MlflowRegistryClient]:
        """A client of the registry; with `workspace_id`, only if the registry is attached to it (every
        operation that names a workspace passes it)."""
        registry = self.store.get_registry(registry_id)
        if workspace_id is not None and workspace_id not in registry.workspace_ids:
            raise NotFound(f"registry {registry_id} is not attached to workspace {workspace_id}")
        client = MlflowRegistryClient(
            registry.url, registry.token, timeout=self.timeout, retries=self.retries
        )
        try:
            yield client
        finally:
            client.close()
