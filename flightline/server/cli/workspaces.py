"""`flightline workspaces create|list`."""

from __future__ import annotations

from typing import Annotated

import typer

from flightline.server.cli._app import Format, OutputFormat, app, client, console, show

workspaces = typer.Typer(
    help="Workspaces: models, registries and deployments belong to one.", no_args_is_help=True
)
app.add_typer(workspaces, name="workspaces")


@workspaces.command("create")
def create(name: Annotated[str, typer.Argument(help="DNS-compliant, unique name.")]) -> None:
    """Creates a workspace and prints its id."""
    with client() as fl:
        ws = fl.workspaces.create(name)
    console.print(f"workspace {ws.name} (id {ws.id})", highlight=False)


@workspaces.command("list")
def list_(output: OutputFormat = Format.table) -> None:
    """Lists every workspace."""
    with client() as fl:
        show(list(fl.workspaces.list()), ["id", "name", "create_time"], output)
