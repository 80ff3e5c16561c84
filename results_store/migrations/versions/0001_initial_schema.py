"""Initial schema: recordings, provider jobs, results, pipeline runs, lineage.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Self-contained on purpose: migrations never import the live models, which keep changing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def _id() -> sa.Column[int]:
    return sa.Column("id", BigId, nullable=False)


def _job_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["job_id"], ["provider_jobs.id"], name=op.f(f"fk_{table}_job_id_provider_jobs"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("flow_run_id", sa.String(64), nullable=False),
        sa.Column("deployment", sa.String(255), nullable=True),
        sa.Column("trigger", _enum("run_trigger", "schedule", "event", "manual", "backfill"), nullable=False),
        sa.Column("status", _enum("run_status", "running", "completed", "failed"), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("ended_at", Timestamp, nullable=True),
        sa.Column("counts", JSONType, nullable=False),
        sa.Column("code_version", sa.String(64), nullable=False),
        sa.Column("settings_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("flow_run_id", name=op.f("pk_pipeline_runs")),
    )
    recording_status = _enum(
        "recording_status", "discovered", "rejected", "uploading", "submitted", "completed", "failed"
    )
    op.create_table(
        "recordings",
        _id(),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("object_version", sa.String(1100), nullable=False),
        sa.Column("version_id", sa.String(1024), nullable=True),
        sa.Column("etag", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("content_type", sa.String(255), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("channels", sa.SmallInteger(), nullable=True),
        sa.Column("status", recording_status, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("discovered_at", Timestamp, nullable=False),
        sa.Column("processed_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "status NOT IN ('rejected', 'failed') OR reason IS NOT NULL",
            name=op.f("ck_recordings_reason_required"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recordings")),
        sa.UniqueConstraint(
            "bucket", "key", "object_version", name=op.f("uq_recordings_bucket_key_object_version")
        ),
    )
    op.create_index(op.f("ix_recordings_sha256"), "recordings", ["sha256"])

    op.create_table(
        "provider_jobs",
        _id(),
        sa.Column("recording_id", BigId, nullable=False),
        sa.Column("provider", _enum("provider", "valence", "valsea"), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=False),
        sa.Column("channel", sa.SmallInteger(), nullable=True),
        sa.Column(
            "status", _enum("job_status", "submitted", "processing", "completed", "failed"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("submitted_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp, nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("task_run_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["flow_run_id"],
            ["pipeline_runs.flow_run_id"],
            name=op.f("fk_provider_jobs_flow_run_id_pipeline_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_provider_jobs_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_jobs")),
        sa.UniqueConstraint("provider", "external_id", name=op.f("uq_provider_jobs_provider_external_id")),
    )
    op.create_index(op.f("ix_provider_jobs_flow_run_id"), "provider_jobs", ["flow_run_id"])
    op.create_index("ix_provider_jobs_recording", "provider_jobs", ["recording_id", "provider", "channel"])

    op.create_table(
        "emotion_segments",
        _id(),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("segment_index", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("emotion", sa.String(32), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("all_predictions", JSONType, nullable=True),
        _job_fk("emotion_segments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_emotion_segments")),
        sa.UniqueConstraint("job_id", "segment_index", name=op.f("uq_emotion_segments_job_id_segment_index")),
    )
    op.create_table(
        "prosody_results",
        _id(),
        sa.Column("job_id", BigId, nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in _PROSODY_METRICS),
        _job_fk("prosody_results"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prosody_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_prosody_results_job_id")),
    )
    op.create_table(
        "prosody_utterances",
        _id(),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("utterance_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("begin_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("expressions", JSONType, nullable=False),
        _job_fk("prosody_utterances"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prosody_utterances")),
        sa.UniqueConstraint(
            "job_id", "utterance_index", name=op.f("uq_prosody_utterances_job_id_utterance_index")
        ),
    )
    _create_lineage()


_PROSODY_METRICS = ("frustration", "stress", "politeness", "hesitation", "urgency")


def _create_lineage() -> None:
    op.create_table(
        "lineage",
        _id(),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("kind", _enum("lineage_kind", "produced", "reused_from"), nullable=False),
        sa.Column("recording_id", BigId, nullable=False),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("source_recording_id", BigId, nullable=True),
        sa.Column("output_kind", _enum("output_kind", "parquet", "db"), nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("output_uri", sa.Text(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("superseded_at", Timestamp, nullable=True),
        sa.ForeignKeyConstraint(
            ["flow_run_id"], ["pipeline_runs.flow_run_id"], name=op.f("fk_lineage_flow_run_id_pipeline_runs")
        ),
        _job_fk("lineage"),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_lineage_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_recording_id"],
            ["recordings.id"],
            name=op.f("fk_lineage_source_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lineage")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_lineage_key_hash")),
    )
    for column in ("flow_run_id", "job_id", "output_uri", "recording_id"):
        op.create_index(op.f(f"ix_lineage_{column}"), "lineage", [column])


def downgrade() -> None:
    for table in (
        "lineage", "prosody_utterances", "prosody_results", "emotion_segments",
        "provider_jobs", "recordings", "pipeline_runs",
    ):  # fmt: skip
        op.drop_table(table)
