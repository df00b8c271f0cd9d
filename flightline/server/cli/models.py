"""`flightline models upload|list|get|versions` (`flightline upload` is `models upload`) and
`flightline frameworks`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from flightline.client import ModelStatus, ModelVersion
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
    usage,
)

models = typer.Typer(help="Uploaded models and their versions.", no_args_is_help=True)
app.add_typer(models, name="models")
VERSION_COLUMNS = ["model_id", "model_name", "version", "framework", "runtime", "status", "status_reason"]
ModelArgument = Annotated[str, typer.Argument(help="Model id, or name with --workspace.")]
OptionalWorkspace = Annotated[str | None, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _schema(path: Path | None, option: str) -> pa.Schema | None:
    if path is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(path.read_bytes()))
    except OSError as error:
        usage(f"{option} {path}: {error.strerror or error}")
    except pa.ArrowException:
        usage(f"{option} {path}: not an Arrow IPC-serialized schema")


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            usage(f"--option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def upload(
    source: Annotated[str, typer.Argument(help="A model file, or with --registry a registry path.")],
    name: Annotated[str, typer.Option(help="DNS-compliant model name.")],
    workspace: Annotated[
        str, typer.Option("--workspace", "--workspace-id", "-w", help="Workspace id or name.")
    ],
    framework: Annotated[
        str,
        typer.Option(
            help="e.g. onnx, sklearn, xgboost, python (see `frameworks`); may be left out for an "
            "MLflow model from a registry (its flavor decides)."
        ),
    ] = "",
    registry: Annotated[
        str | None,
        typer.Option(
            help="Registry id: SOURCE is models:/<name>/<version>, models:/<name>@<alias> or a path."
        ),
    ] = None,
    input_schema: Annotated[
        Path | None, typer.Option(help="File with an Arrow IPC-serialized schema.")
    ] = None,
    output_schema: Annotated[
        Path | None, typer.Option(help="File with an Arrow IPC-serialized schema.")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Conversion option KEY=VALUE (repeatable).")
    ] = None,
    public: Annotated[bool, typer.Option(help="Visible to every workspace.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait until the version is READY or ERROR.")] = True,
) -> None:
    """Uploads a model (a file with a progress bar, or a registry version), follows its preparation
    (conversion) and prints the new version. Exits 1 when it ends in ERROR."""
    schemas = _schema(input_schema, "--input-schema"), _schema(output_schema, "--output-schema")
    conversion = _options(option or [])
    if registry is None and not Path(source).is_file():
        usage(f"{source}: no such file (a registry path needs --registry)")
    with client() as fl, stderr.status("waiting for the server") as spinner:

        def state(v: ModelVersion) -> None:
            spinner.update(f"model {v.model_name} version {v.version}: {v.status.value}")

        if registry is None:
            columns = (
                *Progress.get_default_columns()[:1],
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
            )
            with Progress(
                *columns, console=stderr, transient=True, disable=not stderr.is_terminal
            ) as progress:
                task = progress.add_task(f"uploading {Path(source).name}", total=Path(source).stat().st_size)
                stored = fl.upload(
                    source,
                    name=name,
                    workspace=workspace,
                    framework=framework,
                    input_schema=schemas[0],
                    output_schema=schemas[1],
                    options=conversion,
                    public=public,
                    wait=False,
                    progress=lambda sent: progress.update(task, completed=sent),
                )
        else:
            stored = fl.upload(
                source,
                name=name,
                workspace=workspace,
                framework=framework,
                registry=registry,
                input_schema=schemas[0],
                output_schema=schemas[1],
                options=conversion,
                public=public,
                wait=False,
            )
        version = fl.wait_version(stored.model_id, stored.version, on_status=state) if wait else stored
    note = version.status_reason or version.conversion_note
    console.print(
        f"model {version.model_name} (id {version.model_id}) version {version.version}: "
        f"{version.status.value} on runtime {version.runtime or '-'}" + (f" ({note})" if note else ""),
        highlight=False,
    )
    if version.input_schema is not None:
        console.print(f"input schema: {_describe(version.input_schema)}", highlight=False)
    if version.status is ModelStatus.ERROR:
        raise typer.Exit(1)


models.command("upload")(upload)
app.command("upload", help="Same as `models upload`.")(upload)


@models.command("list")
def list_(workspace: WorkspaceOption, output: OutputFormat = Format.table) -> None:
    """Lists a workspace's models (and every public one) with their latest version."""
    with client() as fl:
        found = list(fl.models.list(workspace=workspace))
    if output is Format.json:
        show(found, [], output)
        return
    rows = [(m, m.latest_version) for m in found]
    show(
        [_Row(m.id, m.name, m.workspace_id, v.version if v else 0, v.status if v else None) for m, v in rows],
        ["id", "name", "workspace_id", "latest_version", "status"],
        output,
    )


@dataclass(frozen=True)
class _Row:  # a model and its latest version, as one table row
    id: int
    name: str
    workspace_id: int
    latest_version: int
    status: ModelStatus | None


@models.command("get")
def get(
    model: ModelArgument,
    version: Annotated[int | None, typer.Option(help="A version (default: the latest).")] = None,
    workspace: OptionalWorkspace = None,
    output: OutputFormat = Format.table,
) -> None:
    """Shows a model version (the latest by default)."""
    with client() as fl:
        found = fl.models.version(_model(model), version, workspace=workspace)
    show_one(found, output)


@models.command("versions")
def versions(
    model: ModelArgument, workspace: OptionalWorkspace = None, output: OutputFormat = Format.table
) -> None:
    """Lists every version of a model."""
    with client() as fl:
        show(list(fl.models.versions(_model(model), workspace=workspace)), VERSION_COLUMNS, output)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _model(model: str) -> int | str:
    return int(model) if model.isdigit() else model


@app.command("frameworks")
def frameworks(output: OutputFormat = Format.table) -> None:
    """Lists the framework catalog and whether a runtime serves each today."""
    with client() as fl:
        found = fl.frameworks()
    show(found, ["name", "runtime", "available", "converts_to_onnx", "install_hint"], output)
