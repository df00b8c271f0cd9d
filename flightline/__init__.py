"""Flightline: MLflow registries to Arrow Flight inference endpoints.

`flightline.connect(...)` is the Python client (`flightline.client`, errors in `flightline.errors`);
`flightline.server` is the control plane and the Flight front door, `flightline.runtimes` the framework
plug-ins that run models, `flightline.v1` the Python bindings generated from `protos/flightline/v1`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flightline")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"

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
