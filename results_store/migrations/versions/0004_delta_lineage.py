"""Lineage records the Delta table version whose commit added each dataset file.

Revision ID: 0002_delta_lineage
Revises: 0002_run_crashed
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_delta_lineage"
down_revision: str | None = "0002_run_crashed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("lineage", sa.Column("table_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lineage") as batch:
        batch.drop_column("table_version")
