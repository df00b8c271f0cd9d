"""The `flightline` command line: one module per verb group, all registered on `_app.app`."""

from __future__ import annotations

from flightline.server.cli import runtimes, serve
from flightline.server.cli._app import app

__all__ = ["app", "runtimes", "serve"]
