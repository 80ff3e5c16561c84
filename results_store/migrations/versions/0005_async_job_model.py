"""provider_jobs.model may be NULL: a Valence async upload names no model.

Revision ID: 0002_async_job_model
Revises: 0002_delta_lineage
Create Date: 2026-11-29

The public SDK's async upload sends no model, so the job's model is what its result shows
(the label set of its comprehensive predictions) or NULL, never the setting we did not send.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_async_job_model"
down_revision: str | None = "0002_delta_lineage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's nullability in place.
    with op.batch_alter_table("provider_jobs") as batch:
        batch.alter_column("model", existing_type=sa.String(64), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE provider_jobs SET model = '4emotions' WHERE model IS NULL")
    with op.batch_alter_table("provider_jobs") as batch:
        batch.alter_column("model", existing_type=sa.String(64), nullable=False)
