"""Metadata store (SQLite, and PostgreSQL when its binaries are installed) and the artifact store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from support.postgres import new_postgres_database

from flightline.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flightline.server.store import artifacts as artifacts_module
from flightline.server.store.artifacts import ArtifactStore
from flightline.server.store.metadata import MIGRATIONS, MetadataStore
from flightline.server.store.records import (
    Conversion,
    DeploymentStatus,
    DeploymentStep,
    ModelStatus,
    ModelVersion,
    StepPlacement,
)
from flightline.server.store.tables import Base

SHA_A = "a" * 64
SHA_B = "b" * 64
INPUT_SCHEMA = pa.schema([("x", pa.list_(pa.float32(), 4))]).serialize().to_pybytes()
OUTPUT_SCHEMA = pa.schema([("y", pa.float32())]).serialize().to_pybytes()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/meta.db"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(db_url: str) -> Iterator[MetadataStore]:
    metadata = MetadataStore(db_url)
    yield metadata
    metadata.close()


def add_version(store: MetadataStore, workspace_id: int, name: str, **overrides: Any) -> ModelVersion:
    fields: dict[str, Any] = {
        "workspace_id": workspace_id,
        "name": name,
        "visibility": "private",
        "framework": "sklearn",
        "runtime": "onnx",
        "native": True,
        "status": ModelStatus.PENDING_CONVERSION,
        "conversion": Conversion(framework="sklearn"),
        "source": "upload:model.pkl",
        "sha256": SHA_A,
        "size_bytes": 123,
        "original_sha256": SHA_A,
    }
    return store.add_model_version(**(fields | overrides))


# -- migrations


def test_migrations_create_exactly_the_tables_of_tables_py(db_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() == "0006_follow"
    engine.dispose()
    # A database already at head opens as it is.
    MetadataStore(db_url).close()


def test_migration_0002_keeps_deployments_and_marks_none_failed_by_fault(db_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            connection.execute(
                sa.text("INSERT INTO workspaces (id, name, created_at) VALUES (1, 'w', CURRENT_TIMESTAMP)")
            )
            connection.execute(
                sa.text(
                    "INSERT INTO deployments (name, workspace_id, status, status_reason, created_at) "
                    "VALUES ('old', 1, 'failed', 'model broke', CURRENT_TIMESTAMP)"
                )
            )
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    store = MetadataStore(db_url)
    try:
        old = store.get_deployment(1, "old")
        assert (old.status, old.status_reason, old.failed_by_fault) == (
            DeploymentStatus.FAILED,
            "model broke",
            False,
        )
    finally:
        store.close()


def test_migration_0005_keeps_rows_and_the_next_start_encrypts_clear_registry_tokens(db_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
            now = "CURRENT_TIMESTAMP"
            connection.exec_driver_sql(f"INSERT INTO workspaces (name, created_at) VALUES ('a', {now})")
            connection.exec_driver_sql(f"INSERT INTO workspaces (name, created_at) VALUES ('b', {now})")
            connection.exec_driver_sql(
                "INSERT INTO registries (id, name, url, token, created_at, updated_at) "
                f"VALUES ('r', 'r', 'https://x.invalid', 'dapi-in-clear', {now}, {now})"
            )
            connection.exec_driver_sql(
                "INSERT INTO deployments (name, workspace_id, status, status_reason, failed_by_fault, "
                f"created_at) VALUES ('old', 1, 'stopped', '', false, {now})"
            )
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT token FROM registries").scalar() == "dapi-in-clear"
    finally:
        engine.dispose()
    store = MetadataStore(db_url)
    try:
        assert store.encrypt_clear_tokens() == 1
        assert store.encrypt_clear_tokens() == 0  # once
        assert store.get_registry("r").token == "dapi-in-clear"
        # the same name in another workspace is a deployment of its own now
        version = add_version(store, 2, "m", status=ModelStatus.READY)
        store.create_deployment(2, "old", [DeploymentStep(version.model_id, 1)])
        assert {d.workspace_id for d in store.deployments_named("old")} == {1, 2}
    finally:
        store.close()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT token FROM registries").scalar()
            assert str(stored).startswith("fernet:") and "dapi" not in str(stored)
    finally:
        engine.dispose()


def test_migration_0003_leaves_rows_unowned_until_one_instance_claims_them(db_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0002")
            now = "CURRENT_TIMESTAMP"
            connection.exec_driver_sql(f"INSERT INTO workspaces (name, created_at) VALUES ('w', {now})")
            connection.exec_driver_sql(
                "INSERT INTO deployments (name, workspace_id, status, status_reason, failed_by_fault, "
                f"created_at) VALUES ('old', 1, 'running', '', false, {now})"
            )
    finally:
        engine.dispose()
    first, second = MetadataStore(db_url, owner="a"), MetadataStore(db_url, owner="b")
    try:
        assert first.get_deployment(1, "old").owner == ""
        assert first.route_version() == 0
        first.claim_unowned()
        second.claim_unowned()  # too late: every row has its owner
        assert second.get_deployment(1, "old").owner == "a"
    finally:
        first.close()
        second.close()


def test_owners_placements_and_the_route_counter(db_url: str) -> None:
    store, owned = MetadataStore(db_url), MetadataStore(db_url, owner="x")  # two instances, one database
    ws = store.create_workspace("w")
    mine = add_version(store, ws.id, "m", status=ModelStatus.CONVERTING)
    assert mine.owner == store.owner == ""
    theirs = add_version(owned, ws.id, "m", status=ModelStatus.CONVERTING)
    assert theirs.owner == "x"
    assert [v.version for v in store.versions_in_status(ModelStatus.CONVERTING, owner="x")] == [2]
    assert len(store.versions_in_status(ModelStatus.CONVERTING)) == 2

    start = store.route_version()
    step = DeploymentStep(mine.model_id, 1)
    deployment = owned.create_deployment(ws.id, "d", [step, step])
    assert deployment.owner == "x" and deployment.placements == ()
    placed = (StepPlacement(True), StepPlacement(False, "grpc+tcp://127.0.0.1:1", "d.1"))
    running = store.update_deployment(ws.id, "d", DeploymentStatus.RUNNING, placements=placed)
    assert running.placements == placed == owned.get_deployment(ws.id, "d").placements
    with pytest.raises(ValueError, match="1 placements for 2 steps"):
        store.update_deployment(ws.id, "d", DeploymentStatus.RUNNING, placements=placed[:1])
    assert store.update_deployment(ws.id, "d", DeploymentStatus.STOPPED).placements == ()
    store.delete_deployment(ws.id, "d")
    assert owned.route_version() == start + 4  # create, RUNNING, STOPPED, delete (not the refused one)
    store.close()
    owned.close()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="in-memory SQLite"):
        MetadataStore("sqlite://")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    MetadataStore(f"sqlite:///{tmp_path}/sub/meta.db").close()
    engine = sa.create_engine(f"sqlite:///{tmp_path}/sub/meta.db")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


# -- workspaces


def test_workspaces(store: MetadataStore) -> None:
    first = store.create_workspace("team-a")
    second = store.create_workspace("team-b")
    assert first.name == "team-a"
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == timedelta(0)
    assert store.get_workspace(first.id) == first
    with pytest.raises(AlreadyExists, match="'team-a' already exists"):
        store.create_workspace("team-a")
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.get_workspace(999)
    with pytest.raises(InvalidArgument, match="1 to 100 characters"):
        store.create_workspace("")
    with pytest.raises(InvalidArgument, match="got 101"):
        store.create_workspace("x" * 101)
    third = store.create_workspace("team-c")
    assert store.list_workspaces(2) == [first, second]
    assert store.list_workspaces(2, after_id=second.id) == [third]
    assert store.list_workspaces(10, after_id=third.id) == []


# -- registries


def test_registries(store: MetadataStore) -> None:
    a = store.create_workspace("a")
    b = store.create_workspace("b")
    registry = store.create_registry(a.id, "mlflow", "http://127.0.0.1:5000", "secret")
    assert uuid.UUID(registry.id).version == 4
    assert (registry.name, registry.url, registry.token) == ("mlflow", "http://127.0.0.1:5000", "secret")
    assert registry.workspace_ids == (a.id,)
    assert registry.created_at == registry.updated_at
    assert store.get_registry(registry.id) == registry

    attached = store.attach_registry(registry.id, b.id)
    assert attached.workspace_ids == (a.id, b.id)
    assert attached.updated_at > registry.updated_at
    assert store.attach_registry(registry.id, b.id) == attached  # idempotent, nothing touched
    assert [r.id for r in store.list_registries(b.id)] == [registry.id]

    detached = store.detach_registry(registry.id, a.id)
    assert detached.workspace_ids == (b.id,)
    assert detached.updated_at > attached.updated_at
    assert store.list_registries(a.id) == []
    assert store.get_registry(registry.id) == detached

    with pytest.raises(NotFound, match=f"registry {registry.id} is not attached to workspace {a.id}"):
        store.detach_registry(registry.id, a.id)
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.create_registry(999, "x", "http://x", "")
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.attach_registry(registry.id, 999)
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.list_registries(999)
    with pytest.raises(NotFound, match="registry 'nope' does not exist"):
        store.get_registry("nope")
    with pytest.raises(NotFound, match="registry 'nope' does not exist"):
        store.attach_registry("nope", a.id)


# -- models


def test_model_versions_are_numbered_per_model(store: MetadataStore) -> None:
    ws = store.create_workspace("ws")
    conversion = Conversion(
        framework="sklearn",
        python_version="3.11",
        requirements=("scikit-learn==1.5", "numpy"),
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        options={"target_opset": "17"},
    )
    first = add_version(store, ws.id, "iris", conversion=conversion, input_schema=INPUT_SCHEMA)
    assert (first.model_name, first.version, first.status) == ("iris", 1, ModelStatus.PENDING_CONVERSION)
    assert first.conversion == conversion
    assert pa.ipc.read_schema(pa.py_buffer(first.conversion.input_schema)).field("x").type.list_size == 4
    assert first.input_schema == INPUT_SCHEMA and first.output_schema == b""
    assert first.created_at.tzinfo is not None

    second = add_version(store, ws.id, "iris", sha256=SHA_B, visibility="public")
    other = add_version(store, ws.id, "wine")
    assert (second.model_id, second.version) == (first.model_id, 2)
    assert (other.version, other.model_id != first.model_id) == (1, True)

    model = store.get_model(first.model_id)
    assert (model.name, model.workspace_id, model.visibility) == ("iris", ws.id, "public")
    assert model.updated_at >= second.created_at
    assert store.find_model(ws.id, "iris") == model
    assert store.find_model(ws.id, "nope") is None

    assert store.get_model_version(first.model_id) == second
    assert store.get_model_version(first.model_id, 1) == first
    assert store.list_model_versions(first.model_id, 10) == [first, second]
    assert store.list_model_versions(first.model_id, 1, after_version=1) == [second]

    with pytest.raises(NotFound, match="model 999 does not exist"):
        store.get_model(999)
    with pytest.raises(NotFound, match=rf"model {first.model_id} \(iris\) has no version 7"):
        store.get_model_version(first.model_id, 7)
    with pytest.raises(NotFound, match="model 999 does not exist"):
        store.list_model_versions(999, 10)
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        add_version(store, 999, "iris")
    with pytest.raises(InvalidArgument, match="visibility must be one of private, public"):
        add_version(store, ws.id, "iris", visibility="secret")


def test_update_model_version_and_versions_in_status(store: MetadataStore) -> None:
    ws = store.create_workspace("ws")
    pending = add_version(store, ws.id, "a")
    converting = add_version(store, ws.id, "b", status=ModelStatus.CONVERTING)
    add_version(store, ws.id, "c", status=ModelStatus.READY)

    updated = store.update_model_version(
        pending.model_id,
        1,
        status=ModelStatus.READY,
        runtime="sklearn",
        native=False,
        conversion_note="skl2onnx cannot convert this estimator",
        sha256=SHA_B,
        size_bytes=456,
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
    )
    assert (updated.status, updated.runtime, updated.native) == (ModelStatus.READY, "sklearn", False)
    assert (updated.sha256, updated.size_bytes, updated.original_sha256) == (SHA_B, 456, SHA_A)
    assert (updated.input_schema, updated.output_schema) == (INPUT_SCHEMA, OUTPUT_SCHEMA)
    assert updated.conversion_note == "skl2onnx cannot convert this estimator"
    assert updated.status_reason == ""  # untouched
    assert updated.updated_at > pending.updated_at
    assert updated.created_at == pending.created_at
    assert store.get_model_version(pending.model_id, 1) == updated

    assert store.versions_in_status(ModelStatus.PENDING_CONVERSION, ModelStatus.CONVERTING) == [converting]
    failed = store.update_model_version(
        converting.model_id, 1, status=ModelStatus.ERROR, status_reason="server restarted during conversion"
    )
    assert failed.status_reason == "server restarted during conversion"
    assert store.versions_in_status(ModelStatus.CONVERTING) == []
    assert [v.model_name for v in store.versions_in_status(ModelStatus.READY)] == ["a", "c"]

    with pytest.raises(NotFound, match=rf"model {pending.model_id} \(a\) has no version 2"):
        store.update_model_version(pending.model_id, 2, status=ModelStatus.READY)


def test_list_models_shows_own_and_public_models(store: MetadataStore) -> None:
    a = store.create_workspace("a")
    b = store.create_workspace("b")
    a_private = add_version(store, a.id, "a-private").model_id
    b_private = add_version(store, b.id, "b-private").model_id
    b_public = add_version(store, b.id, "b-public", visibility="public").model_id
    a_second = add_version(store, a.id, "a-second").model_id

    assert [m.id for m in store.list_models(a.id, 10)] == [a_private, b_public, a_second]
    assert [m.id for m in store.list_models(b.id, 10)] == [b_private, b_public]
    assert [m.id for m in store.list_models(a.id, 2)] == [a_private, b_public]
    assert [m.id for m in store.list_models(a.id, 2, after_id=b_public)] == [a_second]
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.list_models(999, 10)


def test_concurrent_uploads_of_one_name_get_distinct_versions(store: MetadataStore) -> None:
    ws = store.create_workspace("ws")
    uploads = 8
    start = threading.Barrier(uploads)
    results: list[ModelVersion] = []
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        start.wait()
        try:
            results.append(add_version(store, ws.id, "contested", source=f"upload:{i}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(v.version for v in results) == list(range(1, uploads + 1))
    assert len({v.model_id for v in results}) == 1
    assert len({v.source for v in results}) == uploads


# -- deployments


def test_deployments(store: MetadataStore) -> None:
    a = store.create_workspace("a")
    b = store.create_workspace("b")
    first = add_version(store, a.id, "scaler")
    second = add_version(store, a.id, "classifier")
    steps = [DeploymentStep(first.model_id, 1), DeploymentStep(second.model_id, 1)]

    deployment = store.create_deployment(a.id, "pipeline", steps)
    assert (deployment.name, deployment.workspace_id) == ("pipeline", a.id)
    assert (deployment.status, deployment.steps) == (DeploymentStatus.DEPLOYING, tuple(steps))
    assert deployment.created_at.tzinfo is not None
    assert store.get_deployment(a.id, "pipeline") == deployment

    running = store.update_deployment(a.id, "pipeline", DeploymentStatus.RUNNING)
    assert running.status == DeploymentStatus.RUNNING
    with pytest.raises(AlreadyExists, match=r"deployment 'pipeline' already exists \(running\)"):
        store.create_deployment(a.id, "pipeline", steps[:1])

    other = store.create_deployment(b.id, "other", steps[1:])
    assert [d.name for d in store.list_deployments()] == ["pipeline", "other"]
    assert store.list_deployments(b.id) == [other]

    assert not running.failed_by_fault
    faulted = store.update_deployment(b.id, "other", DeploymentStatus.FAILED, "port taken", by_fault=True)
    assert (faulted.status, faulted.failed_by_fault) == (DeploymentStatus.FAILED, True)
    assert store.get_deployment(b.id, "other").failed_by_fault
    assert not store.update_deployment(b.id, "other", DeploymentStatus.RUNNING, by_fault=True).failed_by_fault
    assert not store.update_deployment(b.id, "other", DeploymentStatus.FAILED, "bad model").failed_by_fault

    stopped = store.update_deployment(a.id, "pipeline", DeploymentStatus.STOPPED, "undeployed by user")
    assert stopped.status_reason == "undeployed by user"
    replaced = store.create_deployment(a.id, "pipeline", steps[:1])
    assert replaced.id != deployment.id
    assert (replaced.status, replaced.steps) == (DeploymentStatus.DEPLOYING, tuple(steps[:1]))
    assert store.get_deployment(a.id, "pipeline") == replaced

    store.delete_deployment(b.id, "other")
    assert [d.name for d in store.list_deployments()] == ["pipeline"]
    with pytest.raises(NotFound, match="deployment 'other' does not exist"):
        store.get_deployment(b.id, "other")
    with pytest.raises(NotFound, match="deployment 'other' does not exist"):
        store.delete_deployment(b.id, "other")
    with pytest.raises(NotFound, match="deployment 'other' does not exist"):
        store.update_deployment(b.id, "other", DeploymentStatus.FAILED)
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.list_deployments(999)
    with pytest.raises(NotFound, match="workspace 999 does not exist"):
        store.create_deployment(999, "x", steps)
    with pytest.raises(NotFound, match=r"\(scaler\) has no version 5"):
        store.create_deployment(a.id, "x", [DeploymentStep(first.model_id, 5)])
    with pytest.raises(InvalidArgument, match="at least one step"):
        store.create_deployment(a.id, "x", [])
    with pytest.raises(InvalidArgument, match="give its version number"):
        store.create_deployment(a.id, "x", [DeploymentStep(first.model_id, 0)])
    assert [d.name for d in store.list_deployments()] == ["pipeline"]


# -- restart


def test_a_new_store_on_the_same_database_keeps_everything(db_url: str) -> None:
    before = MetadataStore(db_url)
    ws = before.create_workspace("ws")
    registry = before.create_registry(ws.id, "r", "https://example.invalid", "t")
    version = add_version(before, ws.id, "m", status=ModelStatus.CONVERTING, input_schema=INPUT_SCHEMA)
    deployment = before.create_deployment(ws.id, "d", [DeploymentStep(version.model_id, 1)])
    before.close()

    after = MetadataStore(db_url)
    assert after.list_workspaces(10) == [ws]
    assert after.get_registry(registry.id) == registry
    assert after.get_model_version(version.model_id) == version
    assert after.versions_in_status(ModelStatus.CONVERTING) == [version]
    assert after.get_deployment(ws.id, "d") == deployment
    assert after.get_deployment(ws.id, "d").created_at.tzinfo == UTC
    after.close()


# -- artifacts


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sha256").rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


def test_put_stores_by_sha256_and_dedupes(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "store"))
    data = b"model bytes " * 1000
    sha = hashlib.sha256(data).hexdigest()

    stored = artifacts.put([data[:5000], data[5000:]], expected_size=len(data), expected_sha256=sha.upper())
    assert (stored.sha256, stored.size, stored.created) == (sha, len(data), True)
    assert stored_files(tmp_path / "store") == [tmp_path / "store" / "sha256" / sha[:2] / sha]
    again = artifacts.put(iter([data]))
    assert (again.sha256, again.size, again.created) == (sha, len(data), False)
    assert stored_files(tmp_path / "store") == [tmp_path / "store" / "sha256" / sha[:2] / sha]
    assert temp_files(tmp_path / "store") == []

    assert artifacts.exists(sha) and artifacts.exists(sha.upper())
    with artifacts.open(sha) as stream:
        assert stream.read() == data
    artifacts.delete(sha)
    artifacts.delete(sha)  # already gone: nothing to do
    assert not artifacts.exists(sha)
    with pytest.raises(NotFound, match=f"artifact {sha} does not exist"):
        artifacts.open(sha)
    with pytest.raises(InvalidArgument, match="not a sha256: 'abc'"):
        artifacts.exists("abc")


def test_empty_artifact(tmp_path: Path) -> None:
    stored = ArtifactStore(str(tmp_path)).put([])
    assert (stored.sha256, stored.size) == (hashlib.sha256(b"").hexdigest(), 0)


@pytest.mark.parametrize(
    ("chunks", "expected", "message"),
    [
        ([b"abc", b"def"], {"expected_size": 10}, "upload truncated: got 6 of 10 bytes"),
        ([b"abc", b"def"], {"expected_size": 4}, "upload too long: got more than the declared 4 bytes"),
        ([b"abc"], {"expected_sha256": SHA_A}, f"sha256 mismatch: declared {SHA_A}, received bytes hash to"),
        ([b"abc"], {"expected_sha256": "xyz"}, "not a sha256: 'xyz'"),
    ],
)
def test_a_refused_upload_leaves_nothing(
    tmp_path: Path, chunks: list[bytes], expected: dict[str, Any], message: str
) -> None:
    artifacts = ArtifactStore(str(tmp_path))
    with pytest.raises(InvalidArgument, match=message):
        artifacts.put(chunks, **expected)
    assert stored_files(tmp_path) == []
    assert temp_files(tmp_path) == []
    assert not artifacts.exists(hashlib.sha256(b"".join(chunks)).hexdigest())


def test_a_stream_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path))
    seen_temp: list[Path] = []

    def cancelled_stream() -> Iterator[bytes]:
        yield b"x" * 100_000
        seen_temp.extend(temp_files(tmp_path))  # the partial upload exists only as a temporary object
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError, match="client went away"):
        artifacts.put(cancelled_stream())
    assert len(seen_temp) == 1
    assert stored_files(tmp_path) == []
    assert temp_files(tmp_path) == []


def test_large_put_streams_with_bounded_memory(tmp_path: Path) -> None:
    # Measured in a fresh process: ru_maxrss is a lifetime peak, which earlier tests here may have raised.
    script = textwrap.dedent(
        """
        import hashlib, json, resource, sys
        from flightline.server.store.artifacts import ArtifactStore

        MIB, COUNT = 1 << 20, 200
        expected = hashlib.sha256()

        def chunks():
            base = bytes(range(256)) * (MIB // 256)
            for i in range(COUNT):
                chunk = i.to_bytes(8, "little") + base[8:]
                expected.update(chunk)
                yield chunk

        store = ArtifactStore(sys.argv[1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stored = store.put(chunks(), expected_size=COUNT * MIB)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kib": after - before, "sha256": stored.sha256, "size": stored.size,
                          "expected": expected.hexdigest()}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, text=True, timeout=120
    )
    result = json.loads(done.stdout)
    assert result["size"] == 200 << 20
    assert result["sha256"] == result["expected"]
    assert result["growth_kib"] < 32 * 1024, f"peak RSS grew by {result['growth_kib']} KiB for a 200 MiB put"
    assert (tmp_path / "sha256" / result["sha256"][:2] / result["sha256"]).stat().st_size == 200 << 20


def test_put_file_and_local_path_of_a_local_store(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(os.urandom(3 * artifacts_module.COPY_CHUNK_BYTES + 17))
    artifacts = ArtifactStore(f"file://{tmp_path}/store")
    stored = artifacts.put_file(source)
    assert stored.size == source.stat().st_size
    path = artifacts.local_path(stored.sha256, tmp_path / "cache")
    assert path == tmp_path / "store" / "sha256" / stored.sha256[:2] / stored.sha256
    assert path.read_bytes() == source.read_bytes()
    assert not (tmp_path / "cache").exists()  # local stores need no copy
    with pytest.raises(NotFound, match=f"artifact {SHA_A} does not exist"):
        artifacts.local_path(SHA_A, tmp_path / "cache")


def test_local_path_of_a_remote_store_downloads_once(tmp_path: Path) -> None:
    # pyarrow's in-memory "mock" filesystem stands in for S3: anything that is not a LocalFileSystem.
    artifacts = ArtifactStore("mock:///bucket/prefix")
    data = os.urandom(2 * artifacts_module.COPY_CHUNK_BYTES + 5)
    stored = artifacts.put([data])
    cache = tmp_path / "cache"

    path = artifacts.local_path(stored.sha256, cache)
    assert path == cache / stored.sha256[:2] / stored.sha256
    assert path.read_bytes() == data
    artifacts.delete(stored.sha256)
    assert artifacts.local_path(stored.sha256, cache) == path  # served from the cache
    assert [p.name for p in path.parent.iterdir()] == [stored.sha256]  # no download leftovers
    with pytest.raises(NotFound, match=f"artifact {SHA_A} does not exist"):
        artifacts.local_path(SHA_A, cache)
    assert [p.name for p in path.parent.iterdir()] == [stored.sha256]


def test_local_path_refuses_a_corrupt_remote_artifact(tmp_path: Path) -> None:
    artifacts = ArtifactStore("mock:///bucket")
    sha = hashlib.sha256(b"good").hexdigest()
    # Each mock filesystem lives in its instance only, so corrupt the object through the store's own.
    artifacts._fs.create_dir(f"bucket/sha256/{sha[:2]}")
    with artifacts._fs.open_output_stream(f"bucket/sha256/{sha[:2]}/{sha}") as out:
        out.write(b"bad")
    with pytest.raises(FailedPrecondition, match=f"artifact {sha} is corrupt in the store"):
        artifacts.local_path(sha, tmp_path)
    assert list(tmp_path.rglob("*")) == [tmp_path / sha[:2]]  # the bad download was removed


def test_stale_temporary_objects_are_removed_at_start(tmp_path: Path) -> None:
    ArtifactStore(str(tmp_path))
    stale = tmp_path / "tmp" / "crashed-upload"
    fresh = tmp_path / "tmp" / "upload-in-flight"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - artifacts_module.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    ArtifactStore(str(tmp_path))
    assert temp_files(tmp_path) == [fresh]


def test_latest_versions_of_many_models_in_one_call(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'latest.db'}")
    ws = store.create_workspace("w")
    ids = []
    for name, count in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(count):
            v = store.add_model_version(
                workspace_id=ws.id,
                name=name,
                visibility="private",
                framework="onnx",
                runtime="onnx",
                native=True,
                status=ModelStatus.READY,
                conversion=Conversion("onnx"),
                source="upload:x",
                sha256="0" * 64,
                size_bytes=1,
                original_sha256="0" * 64,
            )
        ids.append(v.model_id)
    latest = store.latest_versions(ids)
    assert {m: v.version for m, v in latest.items()} == dict(zip(ids, (3, 1, 2), strict=True))
    assert latest[ids[0]].model_name == "a"


def test_revisions_and_variants_survive_a_reopen_and_go_with_a_replaced_deployment(db_url: str) -> None:
    from flightline.server.errors import FailedPrecondition
    from flightline.server.store.records import Plan, RevisionStatus

    store = MetadataStore(db_url, owner="me")
    ws = store.create_workspace("w")
    one, two = (add_version(store, ws.id, "m", status=ModelStatus.READY) for _ in range(2))
    v1, v2 = DeploymentStep(one.model_id, one.version), DeploymentStep(two.model_id, two.version)
    store.create_deployment(ws.id, "d", [v1], actor="alice")
    store.update_deployment(ws.id, "d", DeploymentStatus.RUNNING, placements=[StepPlacement(True)])
    plan = Plan((v1,), canary=(v2,), canary_percent=10, shadow=(v2,))
    pending = store.begin_change(ws.id, "d", plan, actor="bob", reason="canary")
    assert (pending.revision, pending.pending_revision) == (1, 2)
    with pytest.raises(FailedPrecondition, match="revision 2 pending"):
        store.begin_change(ws.id, "d", plan, actor="bob", reason="again")
    placed = [StepPlacement(False, "grpc+unix:///s", f"{ws.id}/d@r2c.0", "s3cret")]
    store.finish_change(ws.id, "d", 2, plan, [StepPlacement(True)], placed, placed)
    store.begin_change(ws.id, "d", Plan((v2,)), actor="carol", reason="update")
    store.fail_change(ws.id, "d", 3, "did not load")
    store.close()

    again = MetadataStore(db_url, owner="me")
    deployment = again.get_deployment(ws.id, "d")
    assert (deployment.revision, deployment.pending_revision, deployment.steps) == (2, 0, (v1,))
    assert (deployment.canary, deployment.canary_percent, deployment.shadow) == ((v2,), 10, (v2,))
    assert deployment.canary_placements == tuple(placed) and deployment.plan == plan
    with again._engine.connect() as connection:  # the runtime server's secret is stored encrypted
        (variants,) = connection.execute(sa.text("SELECT variants FROM deployments")).one()
    assert "s3cret" not in variants and "fernet:" in variants
    from flightline.server.store.secrets import Secrets

    again.rotate_secrets(Secrets([Secrets.generate_key()]))  # the variants' secrets are re-encrypted too
    assert again.get_deployment(ws.id, "d").shadow_placements == tuple(placed)
    with again._engine.connect() as connection:
        (rotated,) = connection.execute(sa.text("SELECT variants FROM deployments")).one()
    assert rotated != variants and "s3cret" not in rotated
    assert deployment.status_reason == "revision 3 failed, revision 2 serves: did not load"
    revisions = again.list_revisions(ws.id, "d")
    assert [(r.revision, r.status, r.actor, r.reason) for r in revisions] == [
        (1, RevisionStatus.LIVE, "alice", "deploy"),
        (2, RevisionStatus.LIVE, "bob", "canary"),
        (3, RevisionStatus.FAILED, "carol", "update"),
    ]
    assert revisions[1].plan == plan and revisions[2].status_reason == "did not load"
    assert [r.revision for r in again.list_revisions(ws.id, "d", limit=1, after=1)] == [2]
    # Stopped, the placements go; deployed again under the same name, the history starts afresh.
    stopped = again.update_deployment(ws.id, "d", DeploymentStatus.STOPPED)
    assert stopped.canary_placements == () and stopped.canary == (v2,)
    again.create_deployment(ws.id, "d", [v2])
    assert [r.revision for r in again.list_revisions(ws.id, "d")] == [1]
    again.close()
