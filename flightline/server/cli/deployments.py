"""`flightline deploy`, `undeploy`, `deployments list|get|update|split|shadow|history|follow|unfollow`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table

from flightline.client import Deployment, DeploymentStatus, DeploymentStep
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


Steps = Annotated[
    list[str], typer.Argument(help="Pipeline steps: MODEL or MODEL:VERSION (model id or name), in order.")
]
OptionalSteps = Annotated[
    list[str] | None,
    typer.Argument(
        help="Pipeline steps: MODEL or MODEL:VERSION (model id or name), in order.", show_default=False
    ),
]
Reason = Annotated[str, typer.Option(help="Why, recorded in the deployment's history.")]
Wait = Annotated[bool, typer.Option(help="Wait until the change is live or failed.")]
ChangeWorkspace = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Its workspace (needed when the name is in several); model names are looked up there.",
    ),
]
REVISION_COLUMNS = ["revision", "create_time", "status", "reason", "steps", "canary_steps", "shadow_steps"]


def _report(found: Deployment) -> None:
    """One line about a change: the revision serving, the split, the shadow; exits 1 if it failed."""
    line = f"deployment {found.name}: {found.status.value}, revision {found.revision} [{_pins(found.steps)}]"
    if found.canary_steps:
        line += f", canary [{_pins(found.canary_steps)}] at {found.canary_percent}%"
    if found.shadow_steps:
        line += f", shadow [{_pins(found.shadow_steps)}]"
    if found.pending_revision:
        line += f", revision {found.pending_revision} pending"
    console.print(line, highlight=False)
    if found.status_reason:
        console.print(found.status_reason, highlight=False)
    if found.status_reason.startswith("revision") and " failed" in found.status_reason:
        raise typer.Exit(1)


@deployments.command("update")
def update(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    models: Steps,
    workspace: ChangeWorkspace = None,
    reason: Reason = "",
    wait: Wait = True,
) -> None:
    """Moves a running deployment to other model versions without downtime. Exits 1 if the new steps
    could not be loaded (the old ones still serve)."""
    with client() as fl, stderr.status(f"updating {name}"):
        found = fl.update(name, *models, workspace=workspace, reason=reason, wait=wait)
    _report(found)


@deployments.command("split")
def split(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    percent: Annotated[int, typer.Argument(help="Percentage (0-100) of new streams sent to the canary.")],
    models: OptionalSteps = None,
    workspace: ChangeWorkspace = None,
    reason: Reason = "",
    wait: Wait = True,
) -> None:
    """Sends PERCENT of new streams to a canary pipeline; `split NAME 0` removes the split."""
    with client() as fl, stderr.status(f"splitting {name}"):
        found = fl.split(name, percent, *(models or ()), workspace=workspace, reason=reason, wait=wait)
    _report(found)


@deployments.command("shadow")
def shadow(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    models: OptionalSteps = None,
    workspace: ChangeWorkspace = None,
    reason: Reason = "",
    wait: Wait = True,
) -> None:
    """Mirrors requests to a shadow pipeline whose answers are compared, never returned; no models
    removes the shadow. `deployments get` shows what the shadow did (shadow_stats)."""
    with client() as fl, stderr.status(f"shadowing {name}"):
        found = fl.shadow(name, *(models or ()), workspace=workspace, reason=reason, wait=wait)
    _report(found)


@deployments.command("follow")
def follow(
    name: Annotated[str, typer.Argument(help="Deployment name (running, one step).")],
    uri: Annotated[str, typer.Argument(help="models:/<registered model>@<alias>")],
    registry: Annotated[str, typer.Option(help="Registry id (attached to the deployment's workspace).")],
    workspace: ChangeWorkspace = None,
) -> None:
    """Makes a deployment follow a registry alias: each version the alias moves to is uploaded, prepared
    and swapped in without downtime. `deployments get` shows where the follow stands."""
    with client() as fl:
        found = fl.follow(name, uri, registry=registry, workspace=workspace)
    served = f"serving version {found.followed_version}" if found.followed_version else "swapping it in"
    console.print(f"deployment {name}: follows {found.uri}, {served}", highlight=False)


@deployments.command("unfollow")
def unfollow(
    name: Annotated[str, typer.Argument(help="Deployment name.")], workspace: ChangeWorkspace = None
) -> None:
    """Stops a deployment following its alias; it keeps serving the version it has."""
    with client() as fl:
        found = fl.stop_following(name, workspace=workspace)
    console.print(
        f"deployment {found.name}: follows no alias; revision {found.revision} [{_pins(found.steps)}]",
        highlight=False,
    )


@deployments.command("history")
def history(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    workspace: ChangeWorkspace = None,
    output: OutputFormat = Format.table,
) -> None:
    """Lists a deployment's revisions: who changed what, when and why."""
    with client() as fl:
        revisions = list(fl.deployments.history(name, workspace=workspace))
    if output is Format.json:
        show(revisions, REVISION_COLUMNS, output)
        return
    table = Table()
    for column in REVISION_COLUMNS:
        table.add_column(column.replace("_", " "))
    for r in revisions:
        canary = f"{_pins(r.canary_steps)} at {r.canary_percent}%" if r.canary_steps else ""
        when = f"{r.create_time:%Y-%m-%d %H:%M:%S}" if r.create_time else ""
        status = r.status.value + (f": {r.status_reason}" if r.status_reason else "")
        table.add_row(str(r.revision), when, status, r.reason, _pins(r.steps), canary, _pins(r.shadow_steps))
    console.print(table)


def _pins(steps: Sequence[DeploymentStep]) -> str:
    return ",".join(f"{s.model_id}:{s.version}" for s in steps)
