"""Deployments record whether they FAILED by a fault (retried at start-up) or by their model.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing FAILED deployments count as failed by their model: nothing retries them unasked.
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column("failed_by_fault", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("failed_by_fault")
