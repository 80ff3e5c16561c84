"""call_analytics: what each call's emotions mean (one row per recording and per split channel).

Revision ID: 0002_call_analytics
Revises: 0002_async_job_model
Create Date: 2026-11-29

Self-contained on purpose: migrations never import the live models, which keep changing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_call_analytics"
down_revision: str | None = "0002_async_job_model"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "call_analytics",
        sa.Column("id", BigId, primary_key=True),
        sa.Column(
            "recording_id",
            BigId,
            sa.ForeignKey(
                "recordings.id", ondelete="CASCADE", name="fk_call_analytics_recording_id_recordings"
            ),
            nullable=False,
        ),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("channel", sa.SmallInteger(), nullable=True),
        sa.Column("role", sa.String(64), nullable=True),
        sa.Column("processing_date", sa.Date(), nullable=False),
        sa.Column("dimensions", JSONType, nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("segment_count", sa.Integer(), nullable=False),
        sa.Column("analysed_s", sa.Float(), nullable=False),
        sa.Column("confident_s", sa.Float(), nullable=False),
        sa.Column("emotion_shares", JSONType, nullable=False),
        sa.Column("dominant_emotion", sa.String(32), nullable=True),
        sa.Column("first_third_emotion", sa.String(32), nullable=True),
        sa.Column("last_third_emotion", sa.String(32), nullable=True),
        sa.Column("first_third_negative", sa.Float(), nullable=True),
        sa.Column("last_third_negative", sa.Float(), nullable=True),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("longest_negative_s", sa.Float(), nullable=False),
        sa.Column("changes_per_min", sa.Float(), nullable=False),
        sa.Column("frustration", sa.Float(), nullable=True),
        sa.Column("stress", sa.Float(), nullable=True),
        sa.Column("politeness", sa.Float(), nullable=True),
        sa.Column("hesitation", sa.Float(), nullable=True),
        sa.Column("urgency", sa.Float(), nullable=True),
        sa.Column("top_expressions", JSONType, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_call_analytics"),
        sa.UniqueConstraint("recording_id", "scope", name="uq_call_analytics_recording_id_scope"),
    )
    op.create_index("ix_call_analytics_date", "call_analytics", ["processing_date"])


def downgrade() -> None:
    op.drop_index("ix_call_analytics_date", table_name="call_analytics")
    op.drop_table("call_analytics")
