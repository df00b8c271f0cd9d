"""MLflow models: each version's origin (registry version, alias, flavor) and converter; deployments that
follow a registry alias.

Revision ID: 0006_follow
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_follow"
down_revision: str | None = "0005_auth"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("origin", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("converter", sa.Text(), nullable=False, server_default=""))
    op.create_table(
        "deployment_follows",
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("registry_id", sa.String(36), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("conversion", sa.JSON(), nullable=False),
        sa.Column("followed_version", sa.Text(), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_follows_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("deployment_id", name=op.f("pk_deployment_follows")),
    )


def downgrade() -> None:
    op.drop_table("deployment_follows")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("converter")
        batch.drop_column("origin")
