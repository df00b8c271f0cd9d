"""User scripts loaded as modules of their own (Python steps, BYOP), so two models in one runtime
process never share globals or clash on a module name."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from flightline.runtimes.base import ModelLoadError

_module_ids = itertools.count()


def load_module(path: Path, prefix: str = "flightline_step") -> ModuleType:
    """Runs the script as a new module named `<prefix>_<n>_<stem>`; ModelLoadError when it fails to
    import (the reason names the exception)."""
    name = f"{prefix}_{next(_module_ids)}_{path.stem}"
    # An explicit source loader: stored artifacts are named by their sha256, without a .py suffix.
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module_spec = importlib.util.spec_from_loader(name, loader)
    if module_spec is None:
        raise ModelLoadError(f"{path.name} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"{path.name} failed to import: {type(error).__name__}: {error}") from error
    return module
