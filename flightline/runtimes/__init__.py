"""Runtimes by name, from the plug-in registry (`plugins.PLUGINS`). Modules are imported only when a
runtime is loaded, so a process hosting an ONNX model never imports tensorflow or xgboost."""

from __future__ import annotations

from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime
from flightline.runtimes.plugins import load_attribute, plugin


def runtime_class(name: str) -> type[Runtime]:
    """The Runtime class of the plug-in named `name`; ModelLoadError for an unknown name."""
    registered = plugin(name)
    try:
        cls: type[Runtime] = load_attribute(registered.entry)
    except ModelLoadError as error:
        raise ModelLoadError(f"runtime {name!r} is not available: {error}") from error
    return cls


def load_runtime(name: str, spec: ModelSpec) -> Runtime:
    """Loads `spec` with the runtime registered under `name`."""
    return runtime_class(name).load(spec)
