"""`flightline runtimes install|list|prune`: environments of runtime families."""

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


@runtimes.command("prune")
def runtimes_prune(
    envs_dir: EnvsDir = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
) -> None:
    """Removes environments built for another version of Flightline's runtimes (each change to
    flightline/runtimes builds new ones; the old stay until pruned). An environment a running process
    uses is kept. A cache shared with servers of another Flightline version: their environments look stale
    here; prune from the newest."""
    import shutil

    from flightline.server.hosting.environments import Environments

    environments = Environments(envs_dir)
    free_before = shutil.disk_usage(environments.root).free
    for env in environments.stale():
        what = f"{env.key} (Python {env.python_version}: {' '.join(env.requirements)})"
        if dry_run:
            console.print(f"would remove {what}")
        elif environments.remove(env):
            console.print(f"removed {what}")
        else:
            console.print(f"kept {what}: a running process uses it")
    if not dry_run:
        # What the disk gained, not the folders' sizes: uv hard-links files from its cache and across
        # environments, so removing one may free far less than it seems to hold.
        freed = max(0, shutil.disk_usage(environments.root).free - free_before)
        console.print(f"freed {freed / 1e6:,.0f} MB on disk")
