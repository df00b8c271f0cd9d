"""Work that outlives its caller (issue 6, item 3): registry calls end with their client's deadline, slow
calls cannot take the workers health checks and reads need, and a write whose client has gone is not
committed. Against real servers: the gRPC app, a registry that never answers, a slow DBFS stand-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import settings_for
from support.dbfs_server import DbfsRegistry, dbfs_server
from support.health import responsive
from support.stalled_http import stalled_http
from support.wait import wait_until

from flightline.server import calls
from flightline.server.app import App
from flightline.server.client import Client
from flightline.server.errors import Cancelled, DeadlineExceeded
from flightline.server.store.metadata import MetadataStore
from flightline.v1 import model_pb2, registry_pb2, workspace_pb2

LANE = 4
SLOW_CALLS = 20  # more than the lane, and more than the old fixed pool of 16 workers
DEADLINE_S = 2.0


@pytest.fixture
def small_app(tmp_path: Path) -> Iterator[App]:
    settings = replace(settings_for(tmp_path / "data"), slow_lane=LANE, grpc_workers=2 * LANE)
    with App(settings) as running:
        yield running


def workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def registry(client: Client, workspace_id: int, url: str, token: str = "") -> str:
    request = registry_pb2.CreateRegistryRequest(
        workspace_id=workspace_id, name="remote", url=url, token=token
    )
    return str(client.registries.CreateRegistry(request).id)


def stored_files(app: App) -> list[Path]:
    root = app.settings.data_dir / "artifacts" / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def models_in(client: Client, workspace_id: int) -> list[model_pb2.Model]:
    return list(client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models)


def test_stalled_registry_starves_neither_health_nor_reads(small_app: App) -> None:
    with Client(small_app.grpc_address) as client, stalled_http() as stalled:
        workspace_id = workspace(client, "stall")
        registry_id = registry(client, workspace_id, stalled.url)
        codes: list[tuple[grpc.StatusCode, str, float]] = []
        lock = threading.Lock()

        def slow_call(i: int) -> None:
            started = time.monotonic()
            try:
                if i % 2:
                    client.registries.ListRegistryModels(
                        registry_pb2.ListRegistryModelsRequest(registry_id=registry_id), timeout=DEADLINE_S
                    )
                else:
                    client.models.UploadFromRegistry(
                        model_pb2.UploadFromRegistryRequest(
                            registry_id=registry_id,
                            path="models:/wine/1",
                            workspace_id=workspace_id,
                            name=f"wine-{i}",
                            conversion=model_pb2.Conversion(framework="sklearn"),
                        ),
                        timeout=DEADLINE_S,
                    )
                outcome = (grpc.StatusCode.OK, "", time.monotonic() - started)
            except grpc.RpcError as exc:
                outcome = (exc.code(), str(exc.details()), time.monotonic() - started)
            with lock:
                codes.append(outcome)

        with responsive(small_app.grpc_address, workspace_id) as watch:
            threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(SLOW_CALLS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=DEADLINE_S + 5)
            # The server's own work ends with the calls, not a registry timeout later: the lane empties
            # (3 s leaves room for a loaded machine; the registry's read timeout is far longer).
            assert wait_until(lambda: small_app.slow_lane.in_use == 0, timeout=3.0)
        watch.assert_responsive()

        refused = [c for c in codes if c[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        admitted = [c for c in codes if c[0] != grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(codes) == SLOW_CALLS and len(admitted) == LANE, codes
        assert all(
            code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            for code, _, _ in admitted
        )
        assert all(elapsed < DEADLINE_S + 0.5 for _, _, elapsed in admitted)
        # Refused at once, with a hint to retry, instead of queued on a worker.
        assert all(elapsed < 1.0 and "retry" in details for _, details, elapsed in refused)
        assert stalled.accepted >= 1  # the admitted calls really were waiting on the registry
        assert models_in(client, workspace_id) == [] and stored_files(small_app) == []
        # With the lane free again, slow calls are admitted again.
        with pytest.raises(grpc.RpcError) as again:
            client.registries.ListRegistryModels(
                registry_pb2.ListRegistryModelsRequest(registry_id=registry_id), timeout=0.5
            )
        assert again.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_lane_refusal_carries_the_grpc_retry_pushback(small_app: App) -> None:
    with Client(small_app.grpc_address) as client, stalled_http() as stalled:
        registry_id = registry(client, workspace(client, "push"), stalled.url)
        request = registry_pb2.ListRegistryModelsRequest(registry_id=registry_id)
        pending = [
            client.registries.ListRegistryModels.future(request, timeout=DEADLINE_S) for _ in range(LANE)
        ]
        assert wait_until(lambda: small_app.slow_lane.in_use == LANE, timeout=2.0)
        with pytest.raises(grpc.RpcError) as refused:
            client.registries.ListRegistryModels(request, timeout=DEADLINE_S)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("grpc-retry-pushback-ms", "2000") in tuple(refused.value.trailing_metadata() or ())
        for call in pending:
            assert call.exception() is not None


@pytest.mark.parametrize("client_goes", ["deadline", "cancel"])
def test_download_stops_when_the_client_goes_and_stores_nothing(
    app: App, client: Client, client_goes: str
) -> None:
    """A registry that answers, slowly: the download would finish after the client has gone (its deadline
    passed, or it cancelled). The old server finished it anyway and committed a version nobody awaited."""
    data = np.random.default_rng(1).bytes(3 * 1024 * 1024 + 5)  # four DBFS reads
    slow = DbfsRegistry(token="dapi-t", model="wine", files={"model.pkl": data}, delay_s=0.3)
    with dbfs_server(slow) as databricks:
        workspace_id = workspace(client, "slow")
        registry_id = registry(client, workspace_id, databricks.url, token="dapi-t")
        request = model_pb2.UploadFromRegistryRequest(
            registry_id=registry_id,
            path="models:/wine/1",
            workspace_id=workspace_id,
            name="wine",
            conversion=model_pb2.Conversion(framework="sklearn"),
        )
        with responsive(app.grpc_address, workspace_id) as watch:
            if client_goes == "deadline":
                with pytest.raises(grpc.RpcError) as late:
                    client.models.UploadFromRegistry(request, timeout=1.0)
                assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                call = client.models.UploadFromRegistry.future(request)
                assert wait_until(lambda: slow.reads >= 1, timeout=5.0)
                assert call.cancel()
            assert wait_until(lambda: app.slow_lane.in_use == 0, timeout=1.0)
            requests_after_deadline = slow.requests
            # Had the server carried on, the remaining reads and the commit would land in this time.
            time.sleep(4 * slow.delay_s + 0.5)
        watch.assert_responsive()
        assert slow.requests == requests_after_deadline and slow.reads < 4
        assert models_in(client, workspace_id) == [] and stored_files(app) == []


class _Gone:
    """A call as the domain sees it (calls.Call), in the two states in which a client has gone."""

    def __init__(self, remaining: float | None, active: bool) -> None:
        self.remaining, self.active = remaining, active

    def time_remaining(self) -> float | None:
        return self.remaining

    def is_active(self) -> bool:
        return self.active


@pytest.mark.parametrize(
    ("call", "error"), [(_Gone(0.0, False), DeadlineExceeded), (_Gone(None, False), Cancelled)]
)
def test_a_write_whose_client_has_gone_is_not_committed(
    tmp_path: Path, call: _Gone, error: type[Exception]
) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        with calls.bound(call), pytest.raises(error, match="nothing was changed"):
            store.create_workspace("late")
        assert store.list_workspaces(10) == []
        assert store.create_workspace("on time").name == "on time"  # outside a call: no deadline
    finally:
        store.close()
