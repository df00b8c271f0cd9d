"""Faults of what the server stores into (issue 6, items 3 and 6): corrupt archives, a read-only artifact
store, a SQLite write lock held by another process. Against the real gRPC app, a real second SQLite
connection and a really immutable folder (chattr +i, which stops root too)."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from support.health import responsive
from support.mlp import build_mlp

from flightline.server.app import App
from flightline.server.client import Client
from flightline.server.store.artifacts import UNWRITABLE
from flightline.server.store.metadata import BUSY
from flightline.v1 import model_pb2, workspace_pb2

MEMBER = "model/predict.py"


def workspace(client: Client, name: str) -> int:
    return int(client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name=name)).id)


def meta(name: str, workspace_id: int, framework: str) -> model_pb2.UploadMetadata:
    return model_pb2.UploadMetadata(
        name=name, workspace_id=workspace_id, conversion=model_pb2.Conversion(framework=framework)
    )


def stored_files(app: App) -> list[Path]:
    root = app.settings.data_dir / "artifacts" / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def models_in(client: Client, workspace_id: int) -> list[model_pb2.Model]:
    return list(client.models.ListModels(model_pb2.ListModelsRequest(workspace_id=workspace_id)).models)


def corrupt_zip(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("model/requirements.txt", b"")
        archive.writestr(MEMBER, b"def predict(batch):\n    return batch\n" * 50)
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo(MEMBER)
    # Break the member's data (past its local header), leaving the archive's structure intact: stored
    # bytes flipped fail the CRC; a deflate stream whose first block has the reserved type 3 cannot inflate.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    if method == zipfile.ZIP_DEFLATED:
        data[start] = 0b111  # BFINAL=1, BTYPE=11
    else:
        for i in range(start + 2, start + 8):
            data[i] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    ("method", "reason"),
    [(zipfile.ZIP_STORED, "CRC mismatch"), (zipfile.ZIP_DEFLATED, "bad compressed data")],
)
def test_corrupt_zip_member_is_invalid_argument_naming_it(
    app: App, client: Client, tmp_path: Path, method: int, reason: str
) -> None:
    workspace_id = workspace(client, "zips")
    path = tmp_path / "byop.zip"
    path.write_bytes(corrupt_zip(method))
    with responsive(app.grpc_address, workspace_id) as watch, pytest.raises(grpc.RpcError) as refused:
        client.upload_file(path, meta("byop", workspace_id, "custom"))
    watch.assert_responsive()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert MEMBER in str(refused.value.details()) and reason in str(refused.value.details())
    assert models_in(client, workspace_id) == [] and stored_files(app) == []


@contextmanager
def immutable(*folders: Path) -> Iterator[None]:
    """Folders nobody, root included, can create files in: what a read-only mount looks like to us."""
    done: list[Path] = []
    try:
        for folder in folders:
            if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not available here")
            done.append(folder)
        yield
    finally:
        for folder in done:
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_artifact_store_is_unavailable_and_stores_nothing(
    app: App, client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workspace_id = workspace(client, "ro")
    first = client.upload_file(build_mlp(tmp_path / "v1.onnx"), meta("mlp", workspace_id, "onnx")).version
    assert first.status == model_pb2.MODEL_STATUS_READY
    root = app.settings.data_dir / "artifacts"
    before = stored_files(app)
    folders = [root / "tmp", root / "sha256", *(p for p in (root / "sha256").iterdir() if p.is_dir())]
    second = build_mlp(tmp_path / "v2.onnx", seed=7)
    with (
        immutable(*folders),
        responsive(app.grpc_address, workspace_id) as watch,
        pytest.raises(grpc.RpcError) as refused,
    ):
        client.upload_file(second, meta("mlp", workspace_id, "onnx"))
    watch.assert_responsive()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == UNWRITABLE  # no path, no OS error text
    assert str(root) in caplog.text  # the detail is in the log
    versions = client.models.ListModelVersions(
        model_pb2.ListModelVersionsRequest(model_id=models_in(client, workspace_id)[0].id)
    ).versions
    assert [v.version for v in versions] == [1] and stored_files(app) == before
    for stored in before:  # what was stored before still hashes to its name
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == stored.name


def test_held_sqlite_write_lock_is_unavailable_within_the_deadline(
    app: App, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    existing = workspace(client, "existing")
    database = app.settings.data_dir / "flightline.db"
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        with responsive(app.grpc_address, existing) as watch:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as busy:
                client.workspaces.CreateWorkspace(
                    workspace_pb2.CreateWorkspaceRequest(name="blocked"), timeout=2.0
                )
            elapsed = time.monotonic() - started
            # Reads keep working under the lock (WAL).
            listed = client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest(), timeout=1.0)
            assert [w.name for w in listed.workspaces] == ["existing"]
        watch.assert_responsive()
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE, busy.value.details()
        assert busy.value.details() == BUSY and elapsed < 2.0
        assert "locked" in caplog.text  # the detail is in the log
    finally:
        holder.rollback()
        holder.close()
    listed = client.workspaces.ListWorkspaces(workspace_pb2.ListWorkspacesRequest())
    assert [w.name for w in listed.workspaces] == ["existing"]  # nothing half-written
    assert (
        client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="later")).name == "later"
    )
