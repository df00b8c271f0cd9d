"""`flightline registries create|attach|detach|list|models|versions|artifacts`."""

from __future__ import annotations

from typing import Annotated

import typer

from flightline.server.cli._app import Format, OutputFormat, WorkspaceOption, app, client, console, show

registries = typer.Typer(help="MLflow / Databricks model registries.", no_args_is_help=True)
app.add_typer(registries, name="registries")
RegistryId = Annotated[str, typer.Argument(help="Registry id (from `registries list`).")]


@registries.command("create")
def create(
    name: Annotated[str, typer.Argument(help="DNS-compliant name.")],
    url: Annotated[str, typer.Argument(help="MLflow tracking URL or Databricks workspace URL.")],
    workspace: WorkspaceOption,
    registry_token: Annotated[
        str | None,
        typer.Option(
            envvar="FLIGHTLINE_REGISTRY_TOKEN", help="The registry's access token.", show_default=False
        ),
    ] = None,
) -> None:
    """Connects a registry to a workspace and prints its id."""
    with client() as fl:
        registry = fl.registries.create(name, url, workspace=workspace, token=registry_token)
    console.print(f"registry {registry.name} (id {registry.id}) at {registry.url}", highlight=False)


@registries.command("attach")
def attach(registry_id: RegistryId, workspace: WorkspaceOption) -> None:
    """Makes a registry usable from one more workspace."""
    with client() as fl:
        fl.registries.attach(registry_id, workspace=workspace)
    console.print(f"registry {registry_id} attached to workspace {workspace}", highlight=False)


@registries.command("detach")
def detach(registry_id: RegistryId, workspace: WorkspaceOption) -> None:
    """Removes a registry from a workspace."""
    with client() as fl:
        fl.registries.detach(registry_id, workspace=workspace)
    console.print(f"registry {registry_id} detached from workspace {workspace}", highlight=False)


@registries.command("list")
def list_(workspace: WorkspaceOption, output: OutputFormat = Format.table) -> None:
    """Lists the registries attached to a workspace."""
    with client() as fl:
        show(list(fl.registries.list(workspace=workspace)), ["id", "name", "url", "workspace_ids"], output)


@registries.command("models")
def models(registry_id: RegistryId, output: OutputFormat = Format.table) -> None:
    """Lists the registered models of a registry."""
    with client() as fl:
        show(list(fl.registries.models(registry_id)), ["name", "description"], output)


@registries.command("versions")
def versions(
    registry_id: RegistryId,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    output: OutputFormat = Format.table,
) -> None:
    """Lists the versions of a registered model."""
    with client() as fl:
        found = list(fl.registries.versions(registry_id, name))
    show(found, ["name", "version", "status", "current_stage", "source"], output)


@registries.command("artifacts")
def artifacts(
    registry_id: RegistryId,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Registered model version.")],
    output: OutputFormat = Format.table,
) -> None:
    """Lists the files of a registered model version (their `path` is what `models upload --registry`
    takes)."""
    with client() as fl:
        found = list(fl.registries.artifacts(registry_id, name, version))
    show(found, ["path", "file_size", "is_dir"], output)
