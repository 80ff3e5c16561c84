"""Upload notices (what the webhook and the watcher announced) and the watcher's cursor.

Revision ID: 0002_upload_notices
Revises: 0002_call_analytics
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_upload_notices"
down_revision: str | None = "0002_call_analytics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "upload_notices",
        sa.Column("id", BigId, nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("object_version", sa.String(1100), nullable=False),
        sa.Column("version_id", sa.String(1024), nullable=True),
        sa.Column("etag", sa.String(255), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("emitted_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload_notices")),
        sa.UniqueConstraint(
            "bucket", "key", "object_version", name=op.f("uq_upload_notices_bucket_key_object_version")
        ),
    )
    op.create_index(op.f("ix_upload_notices_batch_id"), "upload_notices", ["batch_id"])
    op.create_table(
        "upload_watch_cursors",
        sa.Column("source", sa.String(1100), nullable=False),
        sa.Column("high_water", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_upload_watch_cursors")),
    )


def downgrade() -> None:
    op.drop_table("upload_watch_cursors")
    op.drop_index(op.f("ix_upload_notices_batch_id"), table_name="upload_notices")
    op.drop_table("upload_notices")
