"""The Typer application every verb module registers on, the global options (`--server`, `--token`,
`--debug`), the one place errors become one line and an exit code, and the output helpers."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import traceback
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, NoReturn

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

from flightline import __version__, errors

try:  # recent typer releases carry their own copy of click; its exceptions are the ones raised
    from typer._click import exceptions as cli_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as cli_errors  # type: ignore[no-redef]
from flightline.client import DEFAULT_SERVER, Flightline, connect

# Client mistakes exit 2 (like a usage error); server and connection faults exit 1.
CLIENT_MISTAKES = (
    errors.InvalidArgumentError,
    errors.NotFoundError,
    errors.AlreadyExistsError,
    errors.FailedPreconditionError,
    errors.UnauthenticatedError,
    errors.PermissionDeniedError,
)


class _Flightline(typer.Typer):
    """Runs the command, turning every expected failure into `error: <message>` on stderr and an exit
    code; `--debug` (anywhere on the line) shows the traceback as well."""

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        debug = "--debug" in sys.argv[1:]
        try:
            # Without standalone mode click hands back `typer.Exit`'s code instead of exiting.
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except typer.Exit as done:
            sys.exit(done.exit_code)
        except typer.Abort:
            fail("interrupted", 1, debug)
        except cli_errors.NoArgsIsHelpError as help_only:
            help_only.show()
            sys.exit(0)
        except cli_errors.ClickException as mistake:
            fail(mistake.format_message(), 2 if mistake.exit_code == 2 else mistake.exit_code, debug)
        except errors.FlightlineError as error:
            fail(error.details, 2 if isinstance(error, CLIENT_MISTAKES) else 1, debug)
        except KeyboardInterrupt:
            fail("interrupted", 130, debug)
        sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int, debug: bool = False) -> NoReturn:
    """Prints `error: <message>` (one line) to stderr and exits with `code`."""
    if debug:
        traceback.print_exc()
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def usage(message: str) -> NoReturn:
    """A mistake on the command line found after parsing (exit 2)."""
    raise cli_errors.UsageError(message)


app = _Flightline(
    help="Flightline: MLflow registries to Arrow Flight inference endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
stderr = Console(stderr=True)


@dataclasses.dataclass
class Options:
    server: str = DEFAULT_SERVER
    token: str | None = None
    debug: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


options = Options()


def client() -> Flightline:
    """A client for the server and token of the global options."""
    return connect(
        options.server,
        token=options.token,
        tls_ca=options.tls_ca,
        tls_cert=options.tls_cert,
        tls_key=options.tls_key,
    )


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    server: Annotated[
        str, typer.Option(envvar="FLIGHTLINE_SERVER", help="Control plane address (gRPC).")
    ] = DEFAULT_SERVER,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLIGHTLINE_TOKEN", help="Sent as 'authorization: Bearer <token>'.", show_default=False
        ),
    ] = None,
    tls_ca: Annotated[
        str | None,
        typer.Option(
            envvar="FLIGHTLINE_TLS_CA", help="PEM file of the CA of the server's certificate (TLS on)."
        ),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(envvar="FLIGHTLINE_TLS_CERT", help="This client's PEM certificate (mTLS).")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(envvar="FLIGHTLINE_TLS_KEY", help="This client's PEM private key (mTLS).")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show the traceback of an error.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Flightline: MLflow registries to Arrow Flight inference endpoints."""
    options.server, options.token, options.debug = server, token or None, debug
    options.tls_ca, options.tls_cert, options.tls_key = tls_ca or None, tls_cert or None, tls_key or None


class Format(enum.StrEnum):
    table = "table"
    json = "json"


OutputFormat = Annotated[Format, typer.Option("--output", "-o", help="table or json.")]
WorkspaceOption = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, pa.Schema):
        return {f.name: str(f.type) for f in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    plain = _plain(value)
    if plain is None:
        return ""
    if isinstance(plain, dict | list):
        return json.dumps(plain)
    return str(plain)


def show(items: Iterable[Any], columns: Sequence[str], fmt: Format, title: str | None = None) -> None:
    """Prints dataclass items as a table of `columns` or as a JSON list of every field."""
    if fmt is Format.json:
        print(json.dumps([_plain(item) for item in items], indent=2))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for item in items:
        table.add_row(*(_cell(getattr(item, column)) for column in columns))
    console.print(table)


def show_one(item: Any, fmt: Format) -> None:
    """Prints one dataclass item as `field: value` lines or as a JSON object."""
    if fmt is Format.json:
        print(json.dumps(_plain(item), indent=2))
        return
    for name, value in _plain(item).items():
        console.print(f"[bold]{name}[/bold]: {_cell(value)}", highlight=False)
