"""The Typer application every verb module registers on, and the console they print with."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from flightline import __version__

app = typer.Typer(
    help="Flightline: MLflow registries to Arrow Flight inference endpoints.", no_args_is_help=True
)
console = Console()


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Flightline: MLflow registries to Arrow Flight inference endpoints."""
