"""Instance ownership of versions and deployments; step placements and a route counter for front doors.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows have no owner (""): the first instance that starts claims them, exactly once.
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=""))
    # Placements are unknown for deployments running before: their owner records them when it resumes them.
    with op.batch_alter_table("deployment_steps") as batch:
        batch.add_column(sa.Column("in_front_door", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("location", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("model_key", sa.Text(), nullable=False, server_default=""))
    route_state = op.create_table(
        "route_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_state")),
    )
    op.bulk_insert(route_state, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("route_state")
    with op.batch_alter_table("deployment_steps") as batch:
        batch.drop_column("model_key")
        batch.drop_column("location")
        batch.drop_column("in_front_door")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("owner")
