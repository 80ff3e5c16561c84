"""The results schema, declared once: SQLAlchemy 2.0 models and, beside each, its dataset form.

Every table that is also exported to the dataset (Delta Lake tables) has three things next to
each other here: the ORM model (the system of record), a frozen dataclass "record" (one row as plain typed
values, built from ORM rows by `repository.dataset_rows`) and a `DatasetTable` holding the
versioned Arrow schema. Keeping them together is what lets a test check that the dataset and
the database agree row for row, and makes a schema change a one-file diff plus a migration.

Natural keys (what idempotent upserts conflict on in the database; one row per key in the dataset):
  recordings        bucket + key + object_version (version id, or "etag:<etag>" when unversioned)
  provider_jobs     provider + external_id
  emotion_segments  job_id + segment_index       prosody_utterances  job_id + utterance_index
  prosody_results   job_id                       pipeline_runs       flow_run_id
  lineage           key_hash (sha256 of kind, recording, job, output uri; see repository)
The dataset's tables (`natural_key` on each `DatasetTable`) add `recording_id` to the job's key:
a recording that reuses another's results (same bytes) gets its own copy of those rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from valence_client.models import PROSODY_METRICS

# --------------------------------------------------------------------------- column types


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values, so
    values are normalised to UTC on the way in and re-labelled UTC on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) value")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL gets 64-bit ids.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _enum(enum_cls: type[StrEnum], name: str) -> sa.Enum:
    # VARCHAR + CHECK rather than a native PostgreSQL enum: adding a value later is a plain
    # constraint swap in a migration instead of an ALTER TYPE that cannot run in a transaction.
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


# --------------------------------------------------------------------------- enums


class RecordingStatus(StrEnum):
    """Where a recording version is in the pipeline; the database, not a process, knows.

    discovered -> accepted | rejected -> uploading -> submitted -> stored -> completed, or
    failed (with its reason) from any step; superseded when the object changed under us (the
    new version is a recording of its own). Each move is an idempotent step any worker may run.
    """

    DISCOVERED = "discovered"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UPLOADING = "uploading"
    SUBMITTED = "submitted"
    STORED = "stored"
    """Every job's results are in the database; the analytics dataset does not have them yet."""
    COMPLETED = "completed"
    FAILED = "failed"
    SUPERSEDED = "superseded"


FINISHED_STATUSES = frozenset(
    {RecordingStatus.COMPLETED, RecordingStatus.REJECTED, RecordingStatus.SUPERSEDED}
)
"""A recording version in one of these states is not processed again by a re-run."""

TERMINAL_STATUSES = FINISHED_STATUSES | {RecordingStatus.FAILED, RecordingStatus.STORED}
"""Nothing more to do for this recording in a run (stored ones only wait for the dataset commit)."""


class Provider(StrEnum):
    VALENCE = "valence"
    VALSEA = "valsea"


class JobStatus(StrEnum):
    """uploading (the provider's id is stored before any audio goes up) -> submitted -> completed
    (results stored in the same transaction) | failed; `unknown` when a create call's answer was
    lost and the provider may or may not have the job (resent only by an operator's retry)."""

    UPLOADING = "uploading"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"


class RunTrigger(StrEnum):
    SCHEDULE = "schedule"
    EVENT = "event"
    MANUAL = "manual"
    BACKFILL = "backfill"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    """The process died or its flow run ended without closing the row (hook or next run)."""


class LineageKind(StrEnum):
    PRODUCED = "produced"
    """The output was computed from this recording by this job in this run."""
    REUSED_FROM = "reused_from"
    """Same bytes (SHA-256) were already analysed: the job's results stand for this recording."""


class OutputKind(StrEnum):
    PARQUET = "parquet"
    DB = "db"


def object_version(version_id: str | None, etag: str) -> str:
    """The version part of a recording's natural key.

    S3 reports `VersionId: "null"` for objects written while versioning was off; those, like
    objects in unversioned buckets, are told apart by ETag instead.
    """
    if version_id and version_id != "null":
        return version_id
    return f"etag:{normalise_etag(etag)}"


def normalise_etag(etag: str) -> str:
    return etag.strip().strip('"')


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# --------------------------------------------------------------------------- dataset (Delta) tables


@dataclass(frozen=True)
class DatasetTable:
    """One Delta table of the dataset: its versioned Arrow schema, partitioning and natural key.

    `schema` lists the columns stored inside each file; the partition columns live only in the
    path (`processing_date=2025-01-02/provider=valence/`) and in the Delta log, and readers add
    them back. `record` is the row type the writer accepts; its fields are the file columns
    minus `run_id` (stamped by the writer) plus any per-row partition column. `natural_key` is
    one row's identity: a commit holds one row per key (a later row of the same key replaces an
    earlier one); see `row_key` when it is left empty. A commit replaces all of its recordings'
    earlier rows, so a re-run's rows take the old ones' place.
    """

    name: str
    version: int
    schema: pa.Schema
    partition_by: tuple[str, ...]
    record: type[Any]
    natural_key: tuple[str, ...] = ()

    @property
    def row_key(self) -> tuple[str, ...]:
        """`natural_key`, or by default `recording_id` plus whichever of `provider_job_id`,
        `channel` and `*_index` columns the table has (one row per recording, job/channel, item)."""
        if self.natural_key:
            return self.natural_key
        names = self.schema.names
        extra = [n for n in ("provider_job_id",) if n in names] or [n for n in ("channel",) if n in names]
        return ("recording_id", *extra, *(n for n in names if n.endswith("_index")))

    @property
    def file_schema(self) -> pa.Schema:
        """The schema written into each file, with the schema version in its metadata."""
        return self.schema.with_metadata(
            {
                b"valence_pipeline.table": self.name.encode(),
                b"valence_pipeline.schema_version": str(self.version).encode(),
            }
        )

    @property
    def read_schema(self) -> pa.Schema:
        """File columns plus partition columns: the Delta table's schema, what `dataset.read_table` returns."""
        return pa.schema([*self.schema, *(PARTITION_FIELDS[name] for name in self.partition_by)])

    @property
    def row_partition_fields(self) -> tuple[str, ...]:
        """Partition columns taken from each row (the processing date comes from the writer)."""
        return tuple(name for name in self.partition_by if name != "processing_date")


PARTITION_FIELDS: dict[str, pa.Field] = {
    "processing_date": pa.field("processing_date", pa.date32(), nullable=False),
    "provider": pa.field("provider", pa.string(), nullable=False),
}

_EXPRESSIONS = pa.map_(pa.string(), pa.float64())
_LINEAGE_FIELDS = [
    pa.field("recording_id", pa.int64(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_version", pa.string(), nullable=False),
]
_JOB_FIELDS = [
    pa.field("provider_job_id", pa.int64(), nullable=False),
    pa.field("external_job_id", pa.string(), nullable=False),
    # Null for a Valence async job whose result did not say which model produced it.
    pa.field("model", pa.string()),
    pa.field("channel", pa.int16()),
]
_RUN_FIELD = pa.field("run_id", pa.string(), nullable=False)


# --------------------------------------------------------------------------- ORM


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class PipelineRun(Base):
    """One flow run. Keyed by Prefect's flow run id so a retried flow run updates its row."""

    __tablename__ = "pipeline_runs"

    flow_run_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    deployment: Mapped[str | None] = mapped_column(sa.String(255))
    trigger: Mapped[RunTrigger] = mapped_column(_enum(RunTrigger, "run_trigger"))
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus, "run_status"))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    code_version: Mapped[str] = mapped_column(sa.String(64))
    settings_hash: Mapped[str] = mapped_column(sa.String(64))
    parent_run_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    """The night (or upload run) a batch run works for; None for a top-level run."""
    flags: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """Run-scoped facts every worker of the run obeys (e.g. Valsea out of credits) and notes."""
    audio_budget_s: Mapped[float | None] = mapped_column(sa.Float)
    audio_reserved_s: Mapped[float] = mapped_column(sa.Float, default=0.0)


class Recording(Base):
    """One version of one source object (an S3 object version, or an ETag when unversioned)."""

    __tablename__ = "recordings"
    __table_args__ = (
        sa.UniqueConstraint("bucket", "key", "object_version"),
        # A rejected or failed recording always says why.
        sa.CheckConstraint(
            "status NOT IN ('rejected', 'failed') OR reason IS NOT NULL", name="reason_required"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bucket: Mapped[str] = mapped_column(sa.String(255))
    key: Mapped[str] = mapped_column(sa.Text)
    object_version: Mapped[str] = mapped_column(sa.String(1100))
    version_id: Mapped[str | None] = mapped_column(sa.String(1024))
    etag: Mapped[str] = mapped_column(sa.String(255))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    duration_s: Mapped[float | None] = mapped_column(sa.Float)
    sample_rate: Mapped[int | None] = mapped_column(sa.Integer)
    channels: Mapped[int | None] = mapped_column(sa.SmallInteger)
    status: Mapped[RecordingStatus] = mapped_column(_enum(RecordingStatus, "recording_status"))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    discovered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    processed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # --- the run model: preflight's verdict, who works on it, and when to try again
    audio: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    """What preflight learned (format, subtype, sample rate, channels, frames)."""
    route: Mapped[str | None] = mapped_column(sa.String(16))
    run_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    """The top-level run (night, upload run) that last took this recording on."""
    claimed_by: Mapped[str | None] = mapped_column(sa.String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """A worker holds the recording until then; an expired lease lets any worker take it over."""
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)


@dataclass(frozen=True, slots=True)
class RecordingRecord:
    recording_id: int
    source_uri: str
    source_version: str
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size_bytes: int
    sha256: str | None
    content_type: str | None
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    status: str
    reason: str | None
    discovered_at: dt.datetime
    processed_at: dt.datetime | None


RECORDINGS_TABLE = DatasetTable(
    name="recordings",
    version=1,
    partition_by=("processing_date",),
    record=RecordingRecord,
    natural_key=("bucket", "key", "source_version"),
    schema=pa.schema(
        [
            *_LINEAGE_FIELDS,
            pa.field("bucket", pa.string(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("version_id", pa.string()),
            pa.field("etag", pa.string(), nullable=False),
            pa.field("size_bytes", pa.int64(), nullable=False),
            pa.field("sha256", pa.string()),
            pa.field("content_type", pa.string()),
            pa.field("duration_s", pa.float64()),
            pa.field("sample_rate", pa.int32()),
            pa.field("channels", pa.int16()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("reason", pa.string()),
            pa.field("discovered_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("processed_at", pa.timestamp("us", tz="UTC")),
            _RUN_FIELD,
        ]
    ),
)


class ProviderJob(Base):
    """One call to a provider: a Valence request or a Valsea job (per channel when split)."""

    __tablename__ = "provider_jobs"
    __table_args__ = (
        sa.UniqueConstraint("provider", "external_id"),
        sa.Index("ix_provider_jobs_recording", "recording_id", "provider", "channel"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    recording_id: Mapped[int] = mapped_column(sa.ForeignKey("recordings.id", ondelete="CASCADE"))
    provider: Mapped[Provider] = mapped_column(_enum(Provider, "provider"))
    # The model that produced the result. A Valence async upload names none (nor does the
    # public SDK): NULL until the timeline shows which (see `repository.save_timelines`).
    model: Mapped[str | None] = mapped_column(sa.String(64))
    external_id: Mapped[str] = mapped_column(sa.String(255))
    channel: Mapped[int | None] = mapped_column(sa.SmallInteger)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=1)
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    flow_run_id: Mapped[str | None] = mapped_column(sa.ForeignKey("pipeline_runs.flow_run_id"), index=True)
    task_run_id: Mapped[str | None] = mapped_column(sa.String(64))
    # --- waiting as data (a harvest of due rows, not a sleeping worker)
    next_poll_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    polls: Mapped[int] = mapped_column(sa.Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ProviderLimit(Base):
    """One provider's limit for one window, shared by every worker.

    The limit in force is the smallest of what the settings say (rewritten at each run's start,
    so a changed setting is never shadowed), what an operator set (`valence-pipeline limits`)
    and what the provider itself reported (`/v1/rate-limit/status`).
    """

    __tablename__ = "provider_limits"

    provider: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    window: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    configured: Mapped[int] = mapped_column(sa.Integer)
    operator: Mapped[int | None] = mapped_column(sa.Integer)
    server: Mapped[int | None] = mapped_column(sa.Integer)

    @property
    def effective(self) -> int:
        return min(v for v in (self.configured, self.operator, self.server) if v is not None)


class ProviderPacing(Base):
    """The row every worker locks to admit a call: one at a time per provider, everywhere."""

    __tablename__ = "provider_pacing"

    provider: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    paused_until: Mapped[float] = mapped_column(sa.Float, default=0.0)
    """Unix time before which nobody calls (the provider said 429 with Retry-After)."""


class ProviderCall(Base):
    """One admitted call (a sliding log): a window's count is the rows younger than the window."""

    __tablename__ = "provider_calls"
    __table_args__ = (sa.Index("ix_provider_calls_provider_at", "provider", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(32))
    at: Mapped[float] = mapped_column(sa.Float)
    """Unix time of admission."""


class EmotionSegmentRow(Base):
    """One entry of a Valence timeline."""

    __tablename__ = "emotion_segments"
    __table_args__ = (sa.UniqueConstraint("job_id", "segment_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("provider_jobs.id", ondelete="CASCADE"))
    segment_index: Mapped[int] = mapped_column(sa.Integer)
    start_s: Mapped[float] = mapped_column(sa.Float)
    end_s: Mapped[float] = mapped_column(sa.Float)
    emotion: Mapped[str] = mapped_column(sa.String(32))
    confidence: Mapped[float] = mapped_column(sa.Float)
    all_predictions: Mapped[dict[str, float] | None] = mapped_column(JSONType)


@dataclass(frozen=True, slots=True)
class EmotionSegmentRecord:
    recording_id: int
    source_uri: str
    source_version: str
    provider_job_id: int
    external_job_id: str
    model: str | None
    channel: int | None
    segment_index: int
    start_s: float
    end_s: float
    emotion: str
    confidence: float
    all_predictions: dict[str, float] | None
    provider: str = Provider.VALENCE.value


EMOTION_SEGMENTS_TABLE = DatasetTable(
    name="emotion_segments",
    version=1,
    partition_by=("processing_date", "provider"),
    record=EmotionSegmentRecord,
    natural_key=("recording_id", "provider_job_id", "segment_index"),
    schema=pa.schema(
        [
            *_LINEAGE_FIELDS,
            *_JOB_FIELDS,
            pa.field("segment_index", pa.int32(), nullable=False),
            pa.field("start_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("emotion", pa.string(), nullable=False),
            pa.field("confidence", pa.float64(), nullable=False),
            pa.field("all_predictions", _EXPRESSIONS),
            _RUN_FIELD,
        ]
    ),
)


class ProsodySummaryRow(Base):
    """The five Valsea summary scores of one job."""

    __tablename__ = "prosody_results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("provider_jobs.id", ondelete="CASCADE"), unique=True)
    frustration: Mapped[float] = mapped_column(sa.Float)
    stress: Mapped[float] = mapped_column(sa.Float)
    politeness: Mapped[float] = mapped_column(sa.Float)
    hesitation: Mapped[float] = mapped_column(sa.Float)
    urgency: Mapped[float] = mapped_column(sa.Float)


@dataclass(frozen=True, slots=True)
class ProsodySummaryRecord:
    recording_id: int
    source_uri: str
    source_version: str
    provider_job_id: int
    external_job_id: str
    model: str | None
    channel: int | None
    frustration: float
    stress: float
    politeness: float
    hesitation: float
    urgency: float
    provider: str = Provider.VALSEA.value


PROSODY_SUMMARY_TABLE = DatasetTable(
    name="prosody_summary",
    version=1,
    partition_by=("processing_date", "provider"),
    record=ProsodySummaryRecord,
    natural_key=("recording_id", "provider_job_id"),
    schema=pa.schema(
        [
            *_LINEAGE_FIELDS,
            *_JOB_FIELDS,
            *(pa.field(name, pa.float64(), nullable=False) for name in PROSODY_METRICS),
            _RUN_FIELD,
        ]
    ),
)


class ProsodyUtteranceRow(Base):
    """One verbose Valsea utterance.

    The 48 expression scores are one JSON object per utterance, not 48 columns or a child
    table: they are always read together (an utterance's profile), never filtered on in SQL,
    and the provider may add names (the protocol models keep unknown fields). A child table
    would write 48 rows per utterance, about 50x the rows for the same information. The
    dataset stores them as a `map<string, double>` column, which DuckDB indexes as
    `expressions['Anger']`.
    """

    __tablename__ = "prosody_utterances"
    __table_args__ = (sa.UniqueConstraint("job_id", "utterance_index"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("provider_jobs.id", ondelete="CASCADE"))
    utterance_index: Mapped[int] = mapped_column(sa.Integer)
    text: Mapped[str] = mapped_column(sa.Text)
    begin_s: Mapped[float] = mapped_column(sa.Float)
    end_s: Mapped[float] = mapped_column(sa.Float)
    expressions: Mapped[dict[str, float]] = mapped_column(JSONType)


@dataclass(frozen=True, slots=True)
class ProsodyUtteranceRecord:
    recording_id: int
    source_uri: str
    source_version: str
    provider_job_id: int
    external_job_id: str
    model: str | None
    channel: int | None
    utterance_index: int
    text: str
    begin_s: float
    end_s: float
    expressions: dict[str, float]
    provider: str = Provider.VALSEA.value


PROSODY_UTTERANCES_TABLE = DatasetTable(
    name="prosody_utterances",
    version=1,
    partition_by=("processing_date", "provider"),
    record=ProsodyUtteranceRecord,
    natural_key=("recording_id", "provider_job_id", "utterance_index"),
    schema=pa.schema(
        [
            *_LINEAGE_FIELDS,
            *_JOB_FIELDS,
            pa.field("utterance_index", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("begin_s", pa.float64(), nullable=False),
            pa.field("end_s", pa.float64(), nullable=False),
            pa.field("expressions", _EXPRESSIONS, nullable=False),
            _RUN_FIELD,
        ]
    ),
)


class Lineage(Base):
    """Where an output came from: source object version, provider job and pipeline run.

    An output is either a data file of a dataset Delta table (`output_kind=parquet`,
    `output_uri` its s3:// or local path, `table_version` the table version whose commit added
    it) or a set of database rows (`output_uri` is `db:<table>?job_id=<id>`). `kind=reused_from`
    records that a recording's results are another recording's (same SHA-256):
    `source_recording_id` and `job_id` point at what was reused, so nothing was paid twice.
    Rows move between files when a commit rewrites a file or compaction merges files; lineage
    follows them to the new file and version. `superseded_at` marks rows whose recording was
    re-written since: that file, read at `table_version`, still holds the old rows until vacuum.
    """

    __tablename__ = "lineage"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[LineageKind] = mapped_column(_enum(LineageKind, "lineage_kind"))
    recording_id: Mapped[int] = mapped_column(sa.ForeignKey("recordings.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("provider_jobs.id", ondelete="CASCADE"), index=True
    )
    flow_run_id: Mapped[str | None] = mapped_column(sa.ForeignKey("pipeline_runs.flow_run_id"), index=True)
    source_recording_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("recordings.id", ondelete="CASCADE")
    )
    output_kind: Mapped[OutputKind] = mapped_column(_enum(OutputKind, "output_kind"))
    table_name: Mapped[str] = mapped_column(sa.String(64))
    output_uri: Mapped[str] = mapped_column(sa.Text, index=True)
    row_count: Mapped[int | None] = mapped_column(sa.Integer)
    table_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    superseded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


DATASET_TABLES: dict[str, DatasetTable] = {
    t.name: t
    for t in (EMOTION_SEGMENTS_TABLE, PROSODY_UTTERANCES_TABLE, PROSODY_SUMMARY_TABLE, RECORDINGS_TABLE)
}


def record_columns(table: DatasetTable) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(table.record))


# --------------------------------------------------------------------------- per-call analytics


class CallAnalyticsRow(Base):
    """What one call's emotions mean, computed by `analytics` from its stored results.

    One row per recording (`scope="call"`, all channels together) and, for a split call, one
    per channel (`scope="channel:N"`, with the channel's `role`). Natural key: recording +
    scope, so recomputing replaces the row. Shares and expressions are JSON objects: they
    are read whole and their names depend on the model.
    """

    __tablename__ = "call_analytics"
    __table_args__ = (
        sa.UniqueConstraint("recording_id", "scope"),
        sa.Index("ix_call_analytics_date", "processing_date"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    recording_id: Mapped[int] = mapped_column(sa.ForeignKey("recordings.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(sa.String(32))
    channel: Mapped[int | None] = mapped_column(sa.SmallInteger)
    role: Mapped[str | None] = mapped_column(sa.String(64))
    processing_date: Mapped[dt.date] = mapped_column(sa.Date)
    dimensions: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    model: Mapped[str | None] = mapped_column(sa.String(64))
    segment_count: Mapped[int] = mapped_column(sa.Integer)
    analysed_s: Mapped[float] = mapped_column(sa.Float)
    confident_s: Mapped[float] = mapped_column(sa.Float)
    emotion_shares: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    dominant_emotion: Mapped[str | None] = mapped_column(sa.String(32))
    first_third_emotion: Mapped[str | None] = mapped_column(sa.String(32))
    last_third_emotion: Mapped[str | None] = mapped_column(sa.String(32))
    first_third_negative: Mapped[float | None] = mapped_column(sa.Float)
    last_third_negative: Mapped[float | None] = mapped_column(sa.Float)
    escalated: Mapped[bool] = mapped_column(sa.Boolean)
    longest_negative_s: Mapped[float] = mapped_column(sa.Float)
    changes_per_min: Mapped[float] = mapped_column(sa.Float)
    frustration: Mapped[float | None] = mapped_column(sa.Float)
    stress: Mapped[float | None] = mapped_column(sa.Float)
    politeness: Mapped[float | None] = mapped_column(sa.Float)
    hesitation: Mapped[float | None] = mapped_column(sa.Float)
    urgency: Mapped[float | None] = mapped_column(sa.Float)
    top_expressions: Mapped[dict[str, float]] = mapped_column(JSONType, default=dict)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True, slots=True)
class CallAnalyticsRecord:
    recording_id: int
    source_uri: str
    source_version: str
    scope: str
    channel: int | None
    role: str | None
    dimensions: dict[str, str]
    model: str | None
    segment_count: int
    analysed_s: float
    confident_s: float
    emotion_shares: dict[str, float]
    dominant_emotion: str | None
    first_third_emotion: str | None
    last_third_emotion: str | None
    first_third_negative: float | None
    last_third_negative: float | None
    escalated: bool
    longest_negative_s: float
    changes_per_min: float
    frustration: float | None
    stress: float | None
    politeness: float | None
    hesitation: float | None
    urgency: float | None
    top_expressions: dict[str, float]
    computed_at: dt.datetime


CALL_ANALYTICS_TABLE = DatasetTable(
    name="call_analytics",
    version=1,
    partition_by=("processing_date",),
    record=CallAnalyticsRecord,
    natural_key=("recording_id", "scope"),
    schema=pa.schema(
        [
            *_LINEAGE_FIELDS,
            pa.field("scope", pa.string(), nullable=False),
            pa.field("channel", pa.int16()),
            pa.field("role", pa.string()),
            pa.field("dimensions", pa.map_(pa.string(), pa.string()), nullable=False),
            pa.field("model", pa.string()),
            pa.field("segment_count", pa.int32(), nullable=False),
            pa.field("analysed_s", pa.float64(), nullable=False),
            pa.field("confident_s", pa.float64(), nullable=False),
            pa.field("emotion_shares", _EXPRESSIONS, nullable=False),
            pa.field("dominant_emotion", pa.string()),
            pa.field("first_third_emotion", pa.string()),
            pa.field("last_third_emotion", pa.string()),
            pa.field("first_third_negative", pa.float64()),
            pa.field("last_third_negative", pa.float64()),
            pa.field("escalated", pa.bool_(), nullable=False),
            pa.field("longest_negative_s", pa.float64(), nullable=False),
            pa.field("changes_per_min", pa.float64(), nullable=False),
            *(pa.field(name, pa.float64()) for name in PROSODY_METRICS),
            pa.field("top_expressions", _EXPRESSIONS, nullable=False),
            pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
            _RUN_FIELD,
        ]
    ),
)
DATASET_TABLES[CALL_ANALYTICS_TABLE.name] = CALL_ANALYTICS_TABLE
# --------------------------------------------------------------------------- upload notices
# Written by the upload webhook and the store watcher (notifications/), read by the nightly
# sweep. Not exported to Parquet: they are bookkeeping about arrivals, not results.


class UploadNotice(Base):
    """One object version some notification announced, at most once (the natural key is the
    recordings' one). `batch_id` is the upload event it went out in (null: not yet sent);
    `emitted_at` is set once the event server has it."""

    __tablename__ = "upload_notices"
    __table_args__ = (sa.UniqueConstraint("bucket", "key", "object_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bucket: Mapped[str] = mapped_column(sa.String(255))
    key: Mapped[str] = mapped_column(sa.Text)
    object_version: Mapped[str] = mapped_column(sa.String(1100))
    version_id: Mapped[str | None] = mapped_column(sa.String(1024))
    etag: Mapped[str | None] = mapped_column(sa.String(255))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    source: Mapped[str] = mapped_column(sa.String(32))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    batch_id: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    emitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WatchCursor(Base):
    """The store watcher's durable cursor per watched prefix: the newest LastModified it has
    looked at (it re-checks a window before it, so a slow upload listed late is not missed)."""

    __tablename__ = "upload_watch_cursors"

    source: Mapped[str] = mapped_column(sa.String(1100), primary_key=True)
    high_water: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
