"""`flightline serve`."""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from flightline.runtimes.signals import stop_on_signals, wait_for_stop
from flightline.server import observability
from flightline.server.access.authn import ADMIN_TOKEN_FILE
from flightline.server.app import App, build
from flightline.server.cli._app import app, console, fail
from flightline.server.client import Client
from flightline.server.instance import check_role
from flightline.server.settings import Settings

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
    role: Annotated[
        str | None,
        typer.Option(help="all (default): everything; control: gRPC and runtimes; frontdoor: Flight only."),
    ] = None,
) -> None:
    """Runs the control plane (gRPC), the Flight front door and the metrics endpoint until interrupted (or
    one of the first two: --role)."""
    settings = Settings.from_env(
        data_dir=data_dir,
        host=host,
        grpc_port=grpc_port,
        flight_port=flight_port,
        metrics_port=metrics_port,
        log_format=log_format,
        role=role,
    )
    try:
        check_role(settings.role)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--role") from None
    _check_ports(settings)
    try:
        observability.configure_logging(settings.log_format, logging.INFO)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--log-format") from None
    stop = stop_on_signals()
    running = build(settings).start()
    try:
        grpc_address = running.grpc_address if isinstance(running, App) else ""
        print(
            f"FLIGHTLINE_SERVING grpc={grpc_address} flight={running.flight_location} "
            f"metrics={getattr(running, 'metrics_port', -1)}",
            flush=True,
        )
        if sample and isinstance(running, App):
            from flightline.server.sample import demo

            # As the platform admin whose token this server wrote at its first start (or FLIGHTLINE_TOKEN).
            token_file = settings.data_dir.resolve() / ADMIN_TOKEN_FILE
            token = os.environ.get("FLIGHTLINE_TOKEN") or (
                token_file.read_text().strip() if token_file.exists() else None
            )
            with Client(running.grpc_address, token) as client:
                result = demo(client, token)
            console.print(f"[bold]Sample model 'ccfraud' is served at {running.flight_location}[/bold]")
            shown = result.drop_columns([c for c in result.column_names if c.startswith("in.")])
            print(shown.to_pandas().to_string(), flush=True)
        wait_for_stop(stop)
    finally:
        _exit_if_stuck(settings.shutdown_grace + STOP_BUDGET_SECONDS)
        closed = running.stop()
    if not closed:
        # Handler threads still wait on clients inside pyarrow, and the interpreter's exit would wait for
        # them forever: everything else is stopped, so leave now.
        log.warning("exiting with Flight client streams still open after %gs", settings.shutdown_grace)
        logging.shutdown()
        os._exit(0)


# What stopping may take beyond the Flight grace: gRPC's own 2 s grace, then runtime servers' 5 s.
STOP_BUDGET_SECONDS = 8.0


def _exit_if_stuck(after: float) -> None:
    """A stop that overruns its budget (a part blocked where Python cannot interrupt it) must not keep the
    process alive: after `after` seconds the process dumps its threads' stacks to the log, for the
    operator, and exits."""

    def give_up() -> None:
        log.warning(
            "exiting with Flight client streams still open or a part still stopping after %gs; "
            "thread stacks follow",
            after,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        logging.shutdown()
        os._exit(0)

    watchdog = threading.Timer(after, give_up)
    watchdog.daemon = True
    watchdog.start()


def _check_ports(settings: Settings) -> None:
    """Says which port is taken, in one line (exit 1), before anything starts: binding them one by one
    later would fail deep inside gRPC or pyarrow with a long traceback."""
    wanted: list[tuple[str, int, str]] = []
    if settings.role != "frontdoor":  # a front door alone serves Flight only
        wanted.append(("gRPC", settings.grpc_port, "--grpc-port"))
        wanted.append(("metrics", settings.metrics_port, "--metrics-port"))
    if settings.role != "control":  # a control plane alone serves no Flight
        wanted.append(("Flight", settings.flight_port, "--flight-port"))
    for what, port, option in wanted:
        if port <= 0:  # 0 picks a free port, -1 (metrics) is off
            continue
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind((settings.host, port))
            except OSError as error:
                taken = error.errno == errno.EADDRINUSE
                reason = "is already in use" if taken else f"cannot be used ({error.strerror})"
                fail(f"the {what} port {port} on {settings.host} {reason} (choose another with {option})", 1)
