"""The backend interface: services ask it to host models; it decides where runtime servers run.

A runtime server hosts every model of one `ServerGroup` (environment x trust group), so each extra model
costs its weights, not another interpreter, while user code never shares a process with another
workspace's models. The local-process backend (`local.py`) is the default; a Kubernetes backend would
start one pod per group and fill its artifacts folder by sha256 from the object store (docs/)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import pyarrow as pa

SHARED: Final = "shared"  # the trust group of data-only artifacts (ONNX ...): any workspace may share it
SERVER_ENVIRONMENT: Final = "server"  # the server's own interpreter and packages


def workspace_group(workspace_id: int) -> str:
    """The trust group of code artifacts (pickles, Python steps) of one workspace."""
    return f"ws-{workspace_id}"


@dataclass(frozen=True)
class ServerGroup:
    environment: str  # SERVER_ENVIRONMENT, or the key of a built environment (hosting/environments.py)
    trust: str  # SHARED, or workspace_group(id)

    @property
    def name(self) -> str:
        # An environment key is 32 hex digits; 12 tell groups apart and keep unix socket paths short.
        return f"{self.environment[:12]}-{self.trust}"


@dataclass(frozen=True)
class LoadRequest:
    """One model for a runtime server; the artifact travels by sha256, never as a host path."""

    key: str  # e.g. "<deployment>.<step index>"
    runtime: str
    artifact: str  # sha256 in the artifact store
    framework: str
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    unpack: bool = False  # the artifact is a zip archive the runtime reads unpacked


class Backend(Protocol):
    def ensure_server(self, group: ServerGroup) -> str:
        """Starts the group's runtime server if needed; returns its Flight location."""
        ...

    def load(self, group: ServerGroup, model: LoadRequest) -> None:
        """Loads the model on the group's runtime server (starting it if needed); raises ModelLoadError
        with the reason when it cannot load. Loaded models come back when their server restarts."""
        ...

    def unload(self, group: ServerGroup, key: str) -> None:
        """Unloads a model; a key that is not loaded is a no-op, so cleanup can be blind."""
        ...

    def secret(self, group: ServerGroup) -> str:
        """What the group's runtime server demands of its callers (flight_service.RUNTIME_SECRET_HEADER);
        "" for a server that demands nothing."""
        ...

    def healthy(self, group: ServerGroup) -> bool: ...

    def close(self) -> None: ...
