"""`flightline whoami`, `users create|list`, `tokens create|list|revoke`, `members set|remove|list` (over
gRPC, as the caller of --token), and `keys generate|rotate` (on the server's own database and settings,
like `serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flightline.server.cli._app import (
    Format,
    OutputFormat,
    WorkspaceOption,
    app,
    client,
    console,
    show,
    stderr,
    usage,
)
from flightline.v1 import access_pb2

users = typer.Typer(help="Users and service accounts (platform admins).", no_args_is_help=True)
tokens = typer.Typer(help="API tokens: sent as 'authorization: Bearer <token>'.", no_args_is_help=True)
members = typer.Typer(help="Workspace members and their roles: viewer, editor, admin.", no_args_is_help=True)
keys = typer.Typer(help="The key that encrypts registry tokens at rest (run where the server runs).")
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
app.add_typer(members, name="members")
app.add_typer(keys, name="keys")


@app.command("whoami")
def whoami() -> None:
    """Prints the caller of --token: user, roles, token id."""
    with client() as fl:
        me = fl.whoami()
    roles = ", ".join(f"{_role(m.role)} of {m.workspace_id}" for m in me.memberships) or "-"
    admin = " (platform admin)" if me.user.admin else ""
    console.print(f"user {me.user.name} (id {me.user.id}){admin}; token {me.token_id}; roles {roles}")


def _role(role: int) -> str:
    return access_pb2.Role.Name(role).removeprefix("ROLE_").lower()


@users.command("create")
def create_user(
    name: Annotated[str, typer.Argument(help="Unique name, 1 to 100 characters.")],
    admin: Annotated[bool, typer.Option(help="A platform admin: every workspace, and users.")] = False,
) -> None:
    """Creates a user and prints its id (then: `flightline tokens create --user ID`)."""
    with client() as fl:
        user = fl.create_user(name, admin=admin)
    console.print(f"user {user.name} (id {user.id})", highlight=False)


@users.command("list")
def list_users(output: OutputFormat = Format.table) -> None:
    """Lists users (platform admins)."""
    with client() as fl:
        show(list(fl.users()), ["id", "name", "admin", "create_time"], output)


@tokens.command("create")
def create_token(
    user: Annotated[int, typer.Option(help="The user's id; 0 for yourself.")] = 0,
    name: Annotated[str, typer.Option(help="What the token is for.")] = "",
    ttl: Annotated[int, typer.Option(help="Seconds until it expires; 0 for never.")] = 0,
) -> None:
    """Creates an API token and prints it on stdout, once: the server keeps only a salted hash."""
    with client() as fl:
        token_id, secret = fl.create_token(user_id=user, name=name, ttl_seconds=ttl)
    typer.echo(secret)
    stderr.print(f"token {token_id}: shown once; keep it secret", style="dim", highlight=False)


@tokens.command("list")
def list_tokens(
    user: Annotated[int, typer.Option(help="The user's id; 0 for yourself.")] = 0,
    output: OutputFormat = Format.table,
) -> None:
    """Lists tokens (never their secrets), revoked and expired ones included."""
    with client() as fl:
        found = fl.tokens(user_id=user)
    show(found, ["id", "user_id", "name", "create_time", "expire_time", "revoke_time"], output)


@tokens.command("revoke")
def revoke_token(token_id: Annotated[str, typer.Argument(help="The token's id (16 hex digits).")]) -> None:
    """Revokes a token: the next call carrying it is UNAUTHENTICATED."""
    with client() as fl:
        fl.revoke_token(token_id)
    console.print(f"token {token_id}: revoked", highlight=False)


@members.command("set")
def set_member(
    user: Annotated[int, typer.Argument(help="The user's id.")],
    role: Annotated[str, typer.Argument(help="viewer, editor or admin.")],
    workspace: WorkspaceOption,
) -> None:
    """Gives a user a role in a workspace (workspace admins)."""
    with client() as fl:
        fl.set_member(workspace, user, role)
    console.print(f"user {user}: {role} of workspace {workspace}", highlight=False)


@members.command("remove")
def remove_member(
    user: Annotated[int, typer.Argument(help="The user's id.")], workspace: WorkspaceOption
) -> None:
    """Takes a user's role in a workspace away (workspace admins)."""
    with client() as fl:
        fl.remove_member(workspace, user)
    console.print(f"user {user}: no role in workspace {workspace}", highlight=False)


@members.command("list")
def list_members(workspace: WorkspaceOption, output: OutputFormat = Format.table) -> None:
    """Lists a workspace's members and their roles."""
    with client() as fl:
        show(list(fl.members(workspace)), ["user_id", "user_name", "role"], output)


DataDir = Annotated[Path, typer.Option(envvar="FLIGHTLINE_DATA_DIR", help="The server's data folder.")]


@keys.command("generate")
def generate() -> None:
    """Prints a new key (for FLIGHTLINE_SECRET_KEY)."""
    from flightline.server.store.secrets import Secrets

    typer.echo(Secrets.generate_key())


@keys.command("rotate")
def rotate(
    data_dir: DataDir = Path(".flightline"),
    new_key: Annotated[
        str | None, typer.Option(help="The new key (default: a fresh one)", show_default=False)
    ] = None,
) -> None:
    """Re-encrypts every stored secret with a new key, in one transaction. With the key in
    data_dir/secret-key, the file gets the new key first and the old one second; with
    FLIGHTLINE_SECRET_KEY, set it to the printed "new,old" keys. Restart the servers afterwards (they
    read the keys at start); the next rotation drops the old key."""
    from flightline.server.settings import Settings
    from flightline.server.store.metadata import MetadataStore
    from flightline.server.store.secrets import KEY_FILE, Secrets, load_keys, write_private

    settings = Settings.from_env(data_dir=data_dir)
    data = settings.data_dir.resolve()
    if not settings.database_url and not (data / "flightline.db").exists():
        usage(f"--data-dir {data_dir}: no database there")
    old = Secrets(load_keys(settings.secret_key, data))
    try:
        new = Secrets([new_key or Secrets.generate_key()])
    except ValueError as error:
        usage(f"--new-key: {error}")
    store = MetadataStore(settings.metadata_url, secrets=old)
    try:
        count = store.rotate_secrets(new)
    finally:
        store.close()
    # The old key stays second: a server still running with it may write a secret before its restart.
    keys = [new.keys[0], old.keys[0]]
    if settings.secret_key:
        typer.echo(",".join(keys))
        console.print(
            f"{count} secrets re-encrypted; set FLIGHTLINE_SECRET_KEY to the keys above", highlight=False
        )
    else:
        write_private(data / KEY_FILE, "\n".join(keys) + "\n")
        console.print(f"{count} secrets re-encrypted; new key first in {data / KEY_FILE}", highlight=False)
