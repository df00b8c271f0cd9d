"""Shared fixtures: real servers on 127.0.0.1, started once where start-up is slow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from support.auth import TEST_TOKEN

# Every server the tests start (in process or as `flightline serve`) gets TEST_TOKEN as its admin's
# first token, and every client (flightline.connect, the CLI, flightline.server.client) sends it.
os.environ["FLIGHTLINE_BOOTSTRAP_TOKEN"] = TEST_TOKEN
os.environ["FLIGHTLINE_TOKEN"] = TEST_TOKEN

from support.postgres import postgres_server  # noqa: F401  (a session fixture for every test file)

from flightline.server.app import App
from flightline.server.client import Client
from flightline.server.settings import Settings


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        grpc_port=0,
        flight_port=0,
        metrics_port=0,
        registry_timeout=5.0,
        bootstrap_token=TEST_TOKEN,
    )


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with App(settings_for(tmp_path / "data")) as running:
        yield running


@pytest.fixture
def client(app: App) -> Iterator[Client]:
    with Client(app.grpc_address) as c:
        yield c


@pytest.fixture(scope="session")
def mlflow_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, object]]]:
    """A real `mlflow server` subprocess with registered models: (url, what populate() logged)."""
    from support.mlflow_server import mlflow_server, populate

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.url, populate(server.url)
