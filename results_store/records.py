"""Plain typed values crossing the store's API: what the pipeline passes in, what queries return.

All are frozen dataclasses, so they pickle between Prefect tasks and never hold a session. The
row types the dataset writer takes live next to the ORM models in `models.py`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from results_store.models import (
    EmotionSegmentRecord,
    JobStatus,
    LineageKind,
    OutputKind,
    ProsodySummaryRecord,
    ProsodyUtteranceRecord,
    Provider,
    RecordingRecord,
    RecordingStatus,
    RunStatus,
    RunTrigger,
    normalise_etag,
    object_version,
)

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RecordingIn:
    """A source object version as listed (and, later, probed). Optional fields may arrive on a
    later upsert; a known value is never overwritten by None."""

    bucket: str
    key: str
    etag: str
    size_bytes: int
    version_id: str | None = None
    sha256: str | None = None
    content_type: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    discovered_at: dt.datetime | None = None

    @property
    def object_version(self) -> str:
        return object_version(self.version_id, self.etag)

    @property
    def natural_key(self) -> tuple[str, str, str]:
        return (self.bucket, self.key, self.object_version)

    @property
    def clean_etag(self) -> str:
        return normalise_etag(self.etag)


@dataclass(frozen=True)
class JobIn:
    """A provider job, written as soon as its external id (request id / job id) is known."""

    recording_id: int
    provider: Provider
    model: str | None
    """The model named to the provider; None for a Valence async upload (learned later)."""
    external_id: str
    status: JobStatus = JobStatus.SUBMITTED
    channel: int | None = None
    attempts: int = 1
    submitted_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None


@dataclass(frozen=True)
class RunStart:
    flow_run_id: str
    trigger: RunTrigger
    code_version: str
    settings_hash: str
    deployment: str | None = None
    started_at: dt.datetime | None = None


@dataclass(frozen=True)
class LineageIn:
    kind: LineageKind
    recording_id: int
    output_kind: OutputKind
    table_name: str
    output_uri: str
    job_id: int | None = None
    flow_run_id: str | None = None
    source_recording_id: int | None = None
    row_count: int | None = None
    table_version: int | None = None
    created_at: dt.datetime | None = None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RecordingRef:
    id: int
    bucket: str
    key: str
    object_version: str
    status: RecordingStatus

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class JobRef:
    id: int
    recording_id: int
    provider: Provider
    model: str | None
    external_id: str
    channel: int | None
    status: JobStatus


@dataclass(frozen=True)
class DatasetRows:
    """Everything the dataset should hold for some recordings, built from the database."""

    recordings: list[RecordingRecord] = field(default_factory=list)
    emotion_segments: list[EmotionSegmentRecord] = field(default_factory=list)
    prosody_summaries: list[ProsodySummaryRecord] = field(default_factory=list)
    prosody_utterances: list[ProsodyUtteranceRecord] = field(default_factory=list)


# --------------------------------------------------------------------------- query views


@dataclass(frozen=True)
class RecordingView:
    id: int
    uri: str
    object_version: str
    version_id: str | None
    etag: str
    size_bytes: int
    sha256: str | None
    content_type: str | None
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    status: RecordingStatus
    reason: str | None
    discovered_at: dt.datetime
    processed_at: dt.datetime | None


@dataclass(frozen=True)
class JobView:
    id: int
    provider: Provider
    model: str | None
    external_id: str
    channel: int | None
    status: JobStatus
    attempts: int
    submitted_at: dt.datetime
    completed_at: dt.datetime | None
    error_code: str | None
    error_message: str | None
    flow_run_id: str | None
    task_run_id: str | None
    recording_id: int


@dataclass(frozen=True)
class OutputView:
    kind: LineageKind
    output_kind: OutputKind
    table_name: str
    uri: str
    row_count: int | None
    job_id: int | None
    flow_run_id: str | None
    source_recording_id: int | None
    table_version: int | None
    created_at: dt.datetime
    superseded_at: dt.datetime | None


@dataclass(frozen=True)
class RunView:
    flow_run_id: str
    deployment: str | None
    trigger: RunTrigger
    status: RunStatus
    started_at: dt.datetime
    ended_at: dt.datetime | None
    counts: dict[str, Any]
    code_version: str
    settings_hash: str


@dataclass(frozen=True)
class RecordingLineage:
    """The chain for one object version: recording -> provider jobs -> outputs -> runs."""

    recording: RecordingView
    jobs: list[JobView]
    outputs: list[OutputView]
    runs: list[RunView]
    reused_from: list[RecordingView]


@dataclass(frozen=True)
class SegmentView:
    channel: int | None
    start_s: float
    end_s: float
    emotion: str
    confidence: float


@dataclass(frozen=True)
class UtteranceView:
    channel: int | None
    begin_s: float
    end_s: float
    text: str
    expressions: dict[str, float]


@dataclass(frozen=True)
class SummaryView:
    channel: int | None
    external_job_id: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Timeline:
    recording: RecordingView
    segments: list[SegmentView]
    utterances: list[UtteranceView]
    summaries: list[SummaryView]
    reused_from: RecordingView | None = None


# --------------------------------------------------------------------------- dataset commits


@dataclass(frozen=True)
class FileSource:
    """Rows of one recording (and provider job, None for the recordings table) in a data file,
    and the run that wrote them."""

    recording_id: int
    job_id: int | None
    rows: int
    run_id: str | None = None


@dataclass(frozen=True)
class DataFileInfo:
    table: str
    uri: str
    rows: int
    sources: tuple[FileSource, ...]


@dataclass(frozen=True)
class TableCommit:
    """One Delta commit to one table (a run's rows, or a compaction).

    `added` are every data file the commit added, with the (recording, job, run) rows each
    holds; `removed` the files it took out of the table (still readable at earlier versions
    until vacuumed); `written` the recordings whose rows the commit replaced (empty for a
    compaction, which only moves rows). `repository.record_dataset_commit` turns this into
    lineage.
    """

    table: str
    version: int
    operation: str
    added: tuple[DataFileInfo, ...] = ()
    removed: tuple[str, ...] = ()
    written: tuple[int, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        table: str,
        version: int,
        operation: str,
        added: Sequence[tuple[str, int, tuple[FileSource, ...]]],
        removed: Sequence[str],
        written: Sequence[int] = (),
    ) -> TableCommit:
        return cls(
            table=table,
            version=version,
            operation=operation,
            added=tuple(DataFileInfo(table, uri, rows, sources) for uri, rows, sources in added),
            removed=tuple(removed),
            written=tuple(written),
        )


@dataclass(frozen=True)
class CommitResult:
    """What one run's export (or one compaction) committed: one `TableCommit` per table."""

    run_id: str
    tables: tuple[TableCommit, ...] = ()

    @property
    def file_uris(self) -> list[str]:
        """Files holding rows this run wrote (not the ones a rewrite only carried over)."""
        return [
            f.uri for t in self.tables for f in t.added if any(src.run_id == self.run_id for src in f.sources)
        ]

    @property
    def versions(self) -> dict[str, int]:
        return {t.table: t.version for t in self.tables}

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(uri for t in self.tables for uri in t.removed)
