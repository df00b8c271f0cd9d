"""Runtimes by name. Modules are imported only when a runtime is loaded, so a process hosting an ONNX
model never imports tensorflow or xgboost."""

from __future__ import annotations

import importlib

from flightline.runtimes.base import ModelLoadError, ModelSpec, Runtime

# name -> "module:Class"; a framework plug-in (e.g. "tensorflow") registers itself here with one line.
RUNTIMES: dict[str, str] = {
    "onnx": "flightline.runtimes.onnx:OnnxRuntime",
    "python": "flightline.runtimes.python_step:PythonStepRuntime",
    "sklearn": "flightline.runtimes.sklearn:SklearnRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    """The Runtime class registered under `name`; ModelLoadError for an unknown name."""
    target = RUNTIMES.get(name)
    if target is None:
        raise ModelLoadError(f"unknown runtime {name!r}; known runtimes: {sorted(RUNTIMES)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(f"runtime {name!r} is not available: {error}") from error
    cls: type[Runtime] = getattr(module, class_name)
    return cls


def load_runtime(name: str, spec: ModelSpec) -> Runtime:
    """Loads `spec` with the runtime registered under `name`."""
    return runtime_class(name).load(spec)
