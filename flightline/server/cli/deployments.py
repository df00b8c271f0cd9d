"""`flightline deploy`, `undeploy`, `deployments list|get`."""

from __future__ import annotations

from typing import Annotated

import typer

from flightline.client import Deployment, DeploymentStatus
from flightline.server.cli._app import (
    Format,
    OutputFormat,
    WorkspaceOption,
    app,
    client,
    console,
    show,
    show_one,
    stderr,
)

deployments = typer.Typer(help="Deployments: named inference endpoints.", no_args_is_help=True)
app.add_typer(deployments, name="deployments")
COLUMNS = ["name", "workspace_id", "status", "status_reason", "flight_location"]


@app.command("deploy")
def deploy(
    name: Annotated[str, typer.Argument(help="DNS-compliant deployment name.")],
    models: Annotated[
        list[str], typer.Argument(help="Pipeline steps: MODEL or MODEL:VERSION (model id or name), in order.")
    ],
    workspace: WorkspaceOption,
    wait: Annotated[bool, typer.Option(help="Wait until it is RUNNING or FAILED.")] = True,
) -> None:
    """Deploys models as a pipeline and prints where it is served. Exits 1 when it FAILED."""
    with client() as fl, stderr.status(f"deploying {name}") as spinner:

        def state(d: Deployment) -> None:
            spinner.update(f"deployment {d.name}: {d.status.value}")

        found = fl.deploy(name, *models, workspace=workspace, wait=wait, on_status=state)
    reason = f" ({found.status_reason})" if found.status_reason else ""
    console.print(
        f"deployment {found.name}: {found.status.value}{reason} at {found.flight_location}", highlight=False
    )
    if found.status is DeploymentStatus.FAILED:
        raise typer.Exit(1)


@app.command("undeploy")
def undeploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    workspace: Annotated[
        str | None,
        typer.Option("--workspace", "-w", help="Its workspace (needed when the name is in several)."),
    ] = None,
) -> None:
    """Stops a deployment."""
    with client() as fl:
        found = fl.undeploy(name, workspace=workspace)
    console.print(f"deployment {found.name}: {found.status.value}", highlight=False)


@deployments.command("list")
def list_(
    workspace: Annotated[str | None, typer.Option("--workspace", "-w", help="Only this workspace's.")] = None,
    output: OutputFormat = Format.table,
) -> None:
    """Lists deployments."""
    with client() as fl:
        show(list(fl.deployments.list(workspace=workspace)), COLUMNS, output)


@deployments.command("get")
def get(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    workspace: Annotated[
        str | None,
        typer.Option("--workspace", "-w", help="Its workspace (needed when the name is in several)."),
    ] = None,
    output: OutputFormat = Format.table,
) -> None:
    """Shows a deployment: state, steps, location and schemas."""
    with client() as fl:
        show_one(fl.deployments.get(name, workspace=workspace), output)
