"""Flightline: MLflow registries to Arrow Flight inference endpoints.

`flightline.server` is the control plane and the Flight front door, `flightline.runtimes` the framework
plug-ins that run models, `flightline.v1` the Python bindings generated from `protos/flightline/v1`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flightline")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"
