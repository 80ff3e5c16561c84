"""The run model: recording and job states in the database, leases, due times, shared limits.

Revision ID: 0002_run_model
Revises: 0001
Create Date: 2026-11-29

Self-contained on purpose: migrations never import the live models, which keep changing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_run_model"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

RECORDING_OLD = ("discovered", "rejected", "uploading", "submitted", "completed", "failed")
RECORDING_NEW = (
    "discovered", "accepted", "rejected", "uploading", "submitted", "stored", "completed", "failed",
    "superseded",
)  # fmt: skip
JOB_OLD = ("submitted", "processing", "completed", "failed")
JOB_NEW = ("uploading", "submitted", "processing", "completed", "failed", "unknown")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.drop_constraint(op.f("ck_recordings_recording_status"), type_="check")
        batch.create_check_constraint("recording_status", _in("status", RECORDING_NEW))
        batch.add_column(sa.Column("audio", JSONType, nullable=True))
        batch.add_column(sa.Column("route", sa.String(16), nullable=True))
        batch.add_column(sa.Column("run_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", Timestamp, nullable=True))
        batch.create_index("ix_recordings_run_id", ["run_id"])
    with op.batch_alter_table("provider_jobs") as batch:
        batch.drop_constraint(op.f("ck_provider_jobs_job_status"), type_="check")
        batch.create_check_constraint("job_status", _in("status", JOB_NEW))
        batch.add_column(sa.Column("next_poll_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("polls", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("claimed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until", Timestamp, nullable=True))
        batch.create_index("ix_provider_jobs_next_poll_at", ["next_poll_at"])
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("parent_run_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("flags", JSONType, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("audio_budget_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("audio_reserved_s", sa.Float(), nullable=False, server_default="0"))
        batch.create_index("ix_pipeline_runs_parent_run_id", ["parent_run_id"])
    op.create_table(
        "provider_limits",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("configured", sa.Integer(), nullable=False),
        sa.Column("operator", sa.Integer(), nullable=True),
        sa.Column("server", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("provider", "window", name=op.f("pk_provider_limits")),
    )
    op.create_table(
        "provider_pacing",
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("provider", name=op.f("pk_provider_pacing")),
    )
    op.create_table(
        "provider_calls",
        sa.Column("id", BigId, nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_calls")),
    )
    op.create_index("ix_provider_calls_provider_at", "provider_calls", ["provider", "at"])


def downgrade() -> None:
    op.drop_index("ix_provider_calls_provider_at", table_name="provider_calls")
    op.drop_table("provider_calls")
    op.drop_table("provider_pacing")
    op.drop_table("provider_limits")
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_index("ix_pipeline_runs_parent_run_id")
        for column in ("audio_reserved_s", "audio_budget_s", "flags", "parent_run_id"):
            batch.drop_column(column)
    with op.batch_alter_table("provider_jobs") as batch:
        batch.drop_index("ix_provider_jobs_next_poll_at")
        for column in ("lease_until", "claimed_by", "polls", "next_poll_at"):
            batch.drop_column(column)
        batch.drop_constraint(op.f("ck_provider_jobs_job_status"), type_="check")
        batch.create_check_constraint("job_status", _in("status", JOB_OLD))
    with op.batch_alter_table("recordings") as batch:
        batch.drop_index("ix_recordings_run_id")
        for column in (
            "next_attempt_at",
            "attempts",
            "lease_until",
            "claimed_by",
            "run_id",
            "route",
            "audio",
        ):
            batch.drop_column(column)
        batch.drop_constraint(op.f("ck_recordings_recording_status"), type_="check")
        batch.create_check_constraint("recording_status", _in("status", RECORDING_OLD))
