"""Flightline: MLflow registries to Arrow Flight inference endpoints.

`flightline.connect(...)` is the Python client (`flightline.client`, errors in `flightline.errors`);
`flightline.server` is the control plane and the Flight front door, `flightline.runtimes` the framework
plug-ins that run models, `flightline.v1` the Python bindings generated from `protos/flightline/v1`."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("flightline")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from flightline import errors
    from flightline.client import (
        Deployment,
        DeploymentStatus,
        Flightline,
        Framework,
        Model,
        ModelStatus,
        ModelVersion,
        Registry,
        Workspace,
        connect,
    )

# The client is imported on first use: runtime environments carry only this file and `flightline.runtimes`
# (flightline/server/hosting/environments.py), without grpc or the client, and must import it cheaply.
_CLIENT = {
    "Deployment",
    "DeploymentStatus",
    "Flightline",
    "Framework",
    "Model",
    "ModelStatus",
    "ModelVersion",
    "Registry",
    "Workspace",
    "connect",
}
# Literal, so that linters and type checkers see the names the lazy import serves.
__all__ = [
    "Deployment",
    "DeploymentStatus",
    "Flightline",
    "Framework",
    "Model",
    "ModelStatus",
    "ModelVersion",
    "Registry",
    "Workspace",
    "__version__",
    "connect",
    "errors",
]


def __getattr__(name: str) -> Any:
    if name in _CLIENT:
        return getattr(import_module("flightline.client"), name)
    if name == "errors":
        return import_module("flightline.errors")
    raise AttributeError(f"module 'flightline' has no attribute {name!r}")
