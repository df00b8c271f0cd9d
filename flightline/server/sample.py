"""The sample model the README's first command serves: a credit-card-fraud-style classifier on 29
float features (like the seed's ccfraud example), trained here, uploaded as sklearn (converted to
ONNX) and deployed."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from sklearn.linear_model import LogisticRegression

from flightline.server.client import Client, every_page, infer
from flightline.v1 import deployment_pb2, model_pb2, workspace_pb2

FEATURES = 29
NAME = "ccfraud"


def train(seed: int = 0) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, FEATURES))
    y = (x[:, :3].sum(axis=1) + 0.3 * rng.normal(size=2000) > 0).astype(np.int64)
    return LogisticRegression(max_iter=500).fit(x, y)


def sample_batch(rows: int = 5, seed: int = 1) -> pa.Table:
    values = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), FEATURES)
    return pa.table({"inputs": column})


def serve_sample(client: Client, console: Console | None = None) -> deployment_pb2.Deployment:
    """Idempotent: reuses the sample workspace and deployment if they exist. Shows the upload's
    preparation and the deployment's start as they happen (both run in the background)."""
    console = console or Console(stderr=True)
    existing = {
        d.name: d
        for d in every_page(
            client.deployments.ListDeployments, deployment_pb2.ListDeploymentsRequest(), "deployments"
        )
    }
    running: deployment_pb2.Deployment | None = existing.get(NAME)
    if running is not None and running.status == deployment_pb2.DEPLOYMENT_STATUS_RUNNING:
        return running
    workspaces = every_page(
        client.workspaces.ListWorkspaces, workspace_pb2.ListWorkspacesRequest(), "workspaces"
    )
    workspace = next(
        (w for w in workspaces if w.name == "sample"), None
    ) or client.workspaces.CreateWorkspace(workspace_pb2.CreateWorkspaceRequest(name="sample"))
    schema = pa.schema([pa.field("inputs", pa.list_(pa.float32(), FEATURES))])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ccfraud.pkl"
        path.write_bytes(pickle.dumps(train()))
        conversion = model_pb2.Conversion(framework="sklearn", input_schema=schema.serialize().to_pybytes())
        with console.status(f"uploading {NAME}") as spinner:

            def version_state(v: model_pb2.ModelVersion) -> None:
                state = model_pb2.ModelStatus.Name(v.status).removeprefix("MODEL_STATUS_").lower()
                spinner.update(f"model {NAME} version {v.version}: {state}")

            uploaded = client.upload_file(
                path,
                model_pb2.UploadMetadata(name=NAME, workspace_id=workspace.id, conversion=conversion),
                on_status=version_state,
            )
    with console.status(f"deploying {NAME}") as spinner:

        def deployment_state(d: deployment_pb2.Deployment) -> None:
            state = deployment_pb2.DeploymentStatus.Name(d.status).removeprefix("DEPLOYMENT_STATUS_")
            spinner.update(f"deployment {NAME}: {state.lower()}")

        return client.deploy(workspace.id, NAME, uploaded.model_id, on_status=deployment_state)


def demo(client: Client, token: str | None = None) -> pa.Table:
    deployment = serve_sample(client)
    return infer(deployment.flight_location, deployment.flight_path, sample_batch(), token=token)
