"""`flightline runtimes install|list`: environments of runtime families."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flightline.server.cli._app import app, console

runtimes = typer.Typer(
    help="Environments of runtime families (virtualenvs built with uv).", no_args_is_help=True
)
app.add_typer(runtimes, name="runtimes")
EnvsDir = Annotated[
    Path | None, typer.Option(help="Environment cache (default: /var/cache/flightline/envs as root).")
]


@runtimes.command("install")
def runtimes_install(
    families: Annotated[list[str], typer.Argument(help="Runtime families, e.g. onnx sklearn.")],
    envs_dir: EnvsDir = None,
) -> None:
    """Builds the environments of runtime families ahead of time (already built ones are reused)."""
    from flightline.server.hosting.environments import FAMILIES, EnvironmentBuildError, Environments

    unknown = [family for family in families if family not in FAMILIES]
    if unknown:
        console.print(f"[red]unknown runtime family {unknown[0]!r}; known: {sorted(FAMILIES)}[/red]")
        raise typer.Exit(1)
    environments = Environments(envs_dir)
    for family in families:
        try:
            with console.status(f"[bold]{family}[/bold]: resolving") as status:

                def show(line: str, family: str = family) -> None:
                    status.update(f"[bold]{family}[/bold]: {line}")

                env = environments.family(family, progress=show)
        except EnvironmentBuildError as error:
            console.print(f"[red]{family}: {error}[/red]")
            raise typer.Exit(1) from None
        verb = "built" if env.created else "already built"
        console.print(f"{family}: {verb} at {env.path} (Python {env.python_version})")


@runtimes.command("list")
def runtimes_list(envs_dir: EnvsDir = None) -> None:
    """Lists the runtime families, their requirements and whether their environment is built."""
    from flightline.server.hosting.environments import FAMILIES, Environments

    environments = Environments(envs_dir)
    for family, requirements in sorted(FAMILIES.items()):
        env = environments.lookup(requirements)
        where = str(env.path) if env is not None else "not built (flightline runtimes install " + family + ")"
        console.print(f"{family}: {' '.join(requirements)}\n    {where}")
