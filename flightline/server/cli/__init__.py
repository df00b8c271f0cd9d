"""The `flightline` command line: one module per verb group, all registered on `_app.app`, every verb
through the Python client (`flightline.client`)."""

from __future__ import annotations

from flightline.server.cli import access, deployments, infer, models, registries, runtimes, serve, workspaces
from flightline.server.cli._app import app

__all__ = ["access", "app", "deployments", "infer", "models", "registries", "runtimes", "serve", "workspaces"]
