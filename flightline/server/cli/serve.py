"""`flightline serve` and `flightline upload`."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from flightline.server import observability
from flightline.server.app import App
from flightline.server.cli._app import app, console
from flightline.server.client import Client
from flightline.server.settings import Settings
from flightline.v1 import model_pb2

log = logging.getLogger(__name__)


@app.command()
def serve(
    data_dir: Annotated[Path | None, typer.Option(help="Folder for SQLite metadata and artifacts.")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    grpc_port: Annotated[int | None, typer.Option(help="Control plane port (0: pick one).")] = None,
    flight_port: Annotated[int | None, typer.Option(help="Flight front door port (0: pick one).")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (default 9464; 0: pick one; -1: off).")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text or json (one JSON object per line); env FLIGHTLINE_LOG_FORMAT.")
    ] = None,
    sample: Annotated[bool, typer.Option(help="Upload, deploy and query the sample ccfraud model.")] = False,
) -> None:
    """Runs the control plane (gRPC), the Flight front door and the metrics endpoint until interrupted."""
    settings = Settings.from_env(
        data_dir=data_dir,
        host=host,
        grpc_port=grpc_port,
        flight_port=flight_port,
        metrics_port=metrics_port,
        log_format=log_format,
    )
    try:
        observability.configure_logging(settings.log_format, logging.INFO)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--log-format") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = App(settings).start()
    try:
        print(
            f"FLIGHTLINE_SERVING grpc={running.grpc_address} flight={running.flight_location} "
            f"metrics={running.metrics_port}",
            flush=True,
        )
        if sample:
            from flightline.server.sample import demo

            with Client(running.grpc_address) as client:
                result = demo(client)
            console.print(f"[bold]Sample model 'ccfraud' is served at {running.flight_location}[/bold]")
            shown = result.drop_columns([c for c in result.column_names if c.startswith("in.")])
            print(shown.to_pandas().to_string(), flush=True)
        stop.wait()
    finally:
        closed = running.stop()
    if not closed:
        # Handler threads still wait on clients inside pyarrow, and the interpreter's exit would wait for
        # them forever: everything else is stopped, so leave now.
        log.warning("exiting with Flight client streams still open after %gs", settings.shutdown_grace)
        logging.shutdown()
        os._exit(0)


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option(help="DNS-compliant model name.")],
    framework: Annotated[str, typer.Option(help="e.g. onnx, sklearn, xgboost, python.")],
    workspace_id: Annotated[int, typer.Option()],
    input_schema: Annotated[
        Path | None, typer.Option(help="File with an Arrow IPC-serialized schema.")
    ] = None,
    output_schema: Annotated[
        Path | None, typer.Option(help="File with an Arrow IPC-serialized schema.")
    ] = None,
    server: Annotated[str, typer.Option(help="Control plane address.")] = "127.0.0.1:50051",
) -> None:
    """Uploads a model file with a progress bar, waits for its preparation (conversion) while showing
    its state, and prints the new version."""
    conversion = model_pb2.Conversion(
        framework=framework,
        input_schema=input_schema.read_bytes() if input_schema else b"",
        output_schema=output_schema.read_bytes() if output_schema else b"",
    )
    meta = model_pb2.UploadMetadata(name=name, workspace_id=workspace_id, conversion=conversion)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Client(server) as client:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)
            response = client.upload_file(
                file, meta, lambda sent: progress.update(task, completed=sent), wait=False
            )
        version = wait_with_status(client, response.model_id, response.version.version)
    status = model_pb2.ModelStatus.Name(version.status)
    console.print(
        f"model {version.model_name} (id {response.model_id}) version {version.version}: {status} "
        f"on runtime {version.runtime} {version.status_reason or version.conversion_note}"
    )
    if version.input_schema:
        console.print(pa.ipc.read_schema(pa.py_buffer(version.input_schema)))


def wait_with_status(client: Client, model_id: int, version: int) -> model_pb2.ModelVersion:
    """Follows a version's preparation with a spinner that names its current state."""
    with console.status("waiting for the server") as spinner:

        def show(current: model_pb2.ModelVersion) -> None:
            state = model_pb2.ModelStatus.Name(current.status).removeprefix("MODEL_STATUS_").lower()
            spinner.update(f"model {current.model_name} version {current.version}: {state}")

        return client.wait_version(model_id, version, on_status=show)
