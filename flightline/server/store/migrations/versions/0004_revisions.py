"""Deployment revisions (who changed what, when, why) and a deployment's live traffic split and shadow.

Revision ID: 0004_revisions
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_revisions"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Deployments from before have served one revision and have no split or shadow.
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("pending_revision", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("variants", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "deployment_revisions",
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_revisions_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", "revision", name=op.f("pk_deployment_revisions")),
    )


def downgrade() -> None:
    op.drop_table("deployment_revisions")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("variants")
        batch.drop_column("pending_revision")
        batch.drop_column("revision")
