"""Access control: users, API tokens (salted hashes), workspace members, the audit table; deployment names
unique per workspace; runtime servers' secrets recorded with their placements.

Registry tokens already stored in clear are encrypted by the server at its next start
(`MetadataStore.encrypt_clear_tokens`): a migration has no access to the key.

Revision ID: 0005_auth
Revises: 0004_revisions
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005_auth"
down_revision: str | None = "0004_revisions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        _time("created_at"),
        _time("expires_at", nullable=True),
        _time("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "workspace_members",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_workspace_members_workspace_id_workspaces")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_workspace_members_user_id_users")),
        sa.PrimaryKeyConstraint("workspace_id", "user_id", name=op.f("pk_workspace_members")),
    )
    op.create_index(op.f("ix_workspace_members_user_id"), "workspace_members", ["user_id"], unique=False)
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _time("time"),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_time"), "audit_events", ["time"], unique=False)
    op.create_index(op.f("ix_audit_events_workspace_id"), "audit_events", ["workspace_id"], unique=False)
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployments_name", type_="unique")
        batch.create_unique_constraint("uq_deployments_workspace_id_name", ["workspace_id", "name"])
    with op.batch_alter_table("deployment_steps") as batch:
        batch.add_column(sa.Column("runtime_secret", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("deployment_steps") as batch:
        batch.drop_column("runtime_secret")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployments_workspace_id_name", type_="unique")
        batch.create_unique_constraint("uq_deployments_name", ["name"])
    op.drop_table("audit_events")
    op.drop_table("workspace_members")
    op.drop_table("api_tokens")
    op.drop_table("users")
