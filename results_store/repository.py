"""Reads and writes of the results database. Every function takes a `Session` from
`Store.session_scope()` and leaves commit/rollback to it, so one task's writes (say, the
segments, the job's new status and their lineage) land in one transaction.

Writes are idempotent upserts on natural keys (see `models`), sent in bulk: one
`INSERT ... ON CONFLICT DO UPDATE` statement carrying many rows (SQLAlchemy's insertmanyvalues
batches them, with RETURNING where ids are needed), never a round trip per row. Rows are sorted
by their key first so concurrent writers lock rows in the same order and cannot deadlock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from results_store.models import (
    FINISHED_STATUSES,
    EmotionSegmentRecord,
    EmotionSegmentRow,
    JobStatus,
    Lineage,
    LineageKind,
    OutputKind,
    PipelineRun,
    ProsodySummaryRecord,
    ProsodySummaryRow,
    ProsodyUtteranceRecord,
    ProsodyUtteranceRow,
    Provider,
    ProviderJob,
    Recording,
    RecordingRecord,
    RecordingStatus,
    RunStatus,
    object_version,
    s3_uri,
)
from results_store.records import (
    CommitResult,
    DatasetRows,
    JobIn,
    JobRef,
    JobView,
    LineageIn,
    OutputView,
    RecordingIn,
    RecordingLineage,
    RecordingRef,
    RecordingView,
    RunStart,
    RunView,
    SegmentView,
    SummaryView,
    TableCommit,
    Timeline,
    UtteranceView,
)
from valence_client.models import PROSODY_METRICS, EmotionSegment, ProsodyResult, timeline_model
from valence_client.redaction import redact

log = logging.getLogger(__name__)

_V = TypeVar("_V", RecordingView, JobView, OutputView, RunView)

CHUNK_ROWS = 5000
EXPORT_CHUNK = 2000
"""Recordings per query in `dataset_rows`, keeping IN lists under SQLite's parameter cap."""
EXPORT_FETCH_ROWS = 1000
"""Result rows fetched at a time in `dataset_rows`: a 9 h recording's ~6,700 utterances are never
all held as raw rows (their JSON text) next to the records built from them."""
COPY_MIN_ROWS = 1000
"""From this many rows, PostgreSQL upserts go through COPY (see `_bulk_upsert`)."""
"""Rows per executemany call: bounds the parameter list held in memory for big timelines."""
MAX_TEXT = 4000
"""Stored error messages and reasons are truncated to this many characters."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- upsert plumbing


def _upsert(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
    fill: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[sa.Row[Any]]:
    """Bulk `INSERT ... ON CONFLICT (key) DO UPDATE`: `update` columns take the new row's value,
    `fill` columns take it only when it is not NULL (a known value is not replaced by a missing
    one)."""
    if not rows:
        return []
    shape = (session.get_bind().dialect.name, model, tuple(key), tuple(update), tuple(fill), tuple(returning))
    stmt = _UPSERTS.get(shape)
    if stmt is None:
        stmt = _UPSERTS.setdefault(shape, _upsert_statement(*shape))
    out: list[sa.Row[Any]] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        result = session.execute(stmt, list(rows[start : start + CHUNK_ROWS]))
        if returning:
            out.extend(result.all())
    return out


_UPSERTS: dict[tuple[Any, ...], Any] = {}
"""Upsert statements by shape (dialect, model, key, update, fill, returning): a few dozen."""


def _upsert_statement(
    dialect: str,
    model: type[Any],
    key: tuple[str, ...],
    update: tuple[str, ...],
    fill: tuple[str, ...],
    returning: tuple[str, ...],
) -> Any:
    """The upsert for one shape, built once: `stmt.excluded` makes a new alias of the table,
    a proxy per column, every time it is asked for. Built per call, a night of 200 recordings
    made ~23,000 such columns, garbage in reference cycles that the process's heap churned
    through all night. A statement is immutable once built, so threads share it."""
    table = model.__table__
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:
        raise ValueError(f"the results store supports SQLite and PostgreSQL databases, not {dialect}")
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
    set_.update({c: sa.func.coalesce(stmt.excluded[c], table.c[c]) for c in fill})
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_)
    if returning:
        stmt = stmt.returning(*(table.c[c] for c in returning), sort_by_parameter_order=True)
    return stmt


def upsert(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> None:
    """Idempotent bulk write on a natural key, for tables kept by other rooms (analytics)."""
    _upsert(session, model, rows, key=key, update=update)


def _bulk_upsert(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> None:
    """`_upsert` for many rows without RETURNING. On PostgreSQL, big batches go through COPY
    into a session temp table and one `INSERT ... SELECT ... ON CONFLICT`: psycopg otherwise
    sends an executemany as one pipelined statement per row."""
    if session.get_bind().dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        _copy_upsert(session, model, rows, key=key, update=update)
    else:
        _upsert(session, model, rows, key=key, update=update)


def _copy_upsert(
    session: Session,
    model: type[Any],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> None:
    table: sa.Table = model.__table__
    columns = list(rows[0])
    staging = f"_in_{table.name}"
    json_columns = {c for c in columns if isinstance(table.c[c].type, sa.JSON)}
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        # Same column types as the target, no constraints; emptied at commit, so a pooled
        # connection reuses it. TRUNCATE: a transaction may load it more than once.
        cols = ", ".join(f'"{c}"' for c in columns)
        cur.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ON COMMIT DELETE ROWS AS '  # noqa: S608 - names from the model
            f'SELECT {cols} FROM "{table.name}" WITH NO DATA'
        )
        cur.execute(f'TRUNCATE "{staging}"')
        with cur.copy(f'COPY "{staging}" ({cols}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(
                    [
                        json.dumps(row[c]) if c in json_columns and row[c] is not None else row[c]
                        for c in columns
                    ]
                )
    stmt = postgresql.insert(table).from_select(
        columns, sa.select(*(sa.column(c) for c in columns)).select_from(sa.table(staging))
    )
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in update})
    session.execute(stmt)


def _dedupe(rows: Iterable[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """Last row per key, sorted by key. PostgreSQL refuses a statement that would update the
    same row twice, and a fixed order keeps concurrent writers from deadlocking."""
    latest = {tuple(row[k] for k in key): row for row in rows}
    return [latest[k] for k in sorted(latest, key=lambda k: tuple((v is None, v) for v in k))]


def _clean_text(text: str | None) -> str | None:
    """Provider errors can quote presigned URLs or keys: stored text goes through `redact`."""
    return None if text is None else redact(text)[:MAX_TEXT]


def _check_output_uri(uri: str) -> str:
    """Only s3:// URIs, local paths and `db:` references are stored; never an http(s) URL,
    which is what a presigned (signed, credential-bearing) URL looks like."""
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        raise ValueError(f"refusing to store a non-s3 URL in lineage: {redact(uri)}")
    if "X-Amz-" in uri or "Signature=" in uri:
        raise ValueError("refusing to store a signed URL in lineage")
    return uri


def db_output_uri(table: str, job_id: int) -> str:
    """How lineage names "the rows of `table` written for job `job_id`"."""
    return f"db:{table}?job_id={job_id}"


# --------------------------------------------------------------------------- recordings


def upsert_recordings(
    session: Session, recordings: Sequence[RecordingIn], *, now: dt.datetime | None = None
) -> list[RecordingRef]:
    """Insert or refresh object versions; returns refs (with their current status) in input order.

    A re-listing never resets progress: status, reason and timestamps are left alone, and a
    known checksum or probe result is not replaced by a missing one.
    """
    if not recordings:
        return []
    now = now or utcnow()
    rows = _dedupe((_recording_row(rec, now) for rec in recordings), ("bucket", "key", "object_version"))
    returned = _upsert(
        session,
        Recording,
        rows,
        key=("bucket", "key", "object_version"),
        update=("version_id", "etag", "size_bytes", "updated_at"),
        fill=("sha256", "content_type", "duration_s", "sample_rate", "channels"),
        returning=("id", "bucket", "key", "object_version", "status"),
    )
    by_key = {
        (r.bucket, r.key, r.object_version): RecordingRef(r.id, r.bucket, r.key, r.object_version, r.status)
        for r in returned
    }
    return [by_key[rec.natural_key] for rec in recordings]


def _recording_row(rec: RecordingIn, now: dt.datetime) -> dict[str, Any]:
    return {
        "bucket": rec.bucket,
        "key": rec.key,
        "object_version": rec.object_version,
        "version_id": rec.version_id,
        "etag": rec.clean_etag,
        "size_bytes": rec.size_bytes,
        "sha256": rec.sha256,
        "content_type": rec.content_type,
        "duration_s": rec.duration_s,
        "sample_rate": rec.sample_rate,
        "channels": rec.channels,
        "status": RecordingStatus.DISCOVERED,
        "reason": None,
        "discovered_at": rec.discovered_at or now,
        "processed_at": None,
        "updated_at": now,
    }


def upsert_recording(session: Session, recording: RecordingIn) -> RecordingRef:
    return upsert_recordings(session, [recording])[0]


def set_recording_status(
    session: Session,
    recording_id: int,
    status: RecordingStatus,
    *,
    reason: str | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Move a recording to `status`. Rejected and failed need a reason; terminal states stamp
    `processed_at`."""
    if status in (RecordingStatus.REJECTED, RecordingStatus.FAILED) and not reason:
        raise ValueError(f"status {status.value} needs a reason")
    at = at or utcnow()
    values: dict[str, Any] = {"status": status, "reason": _clean_text(reason), "updated_at": at}
    if status in (RecordingStatus.COMPLETED, RecordingStatus.FAILED, RecordingStatus.REJECTED):
        values["processed_at"] = at
    result = session.execute(sa.update(Recording).where(Recording.id == recording_id).values(**values))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LookupError(f"no recording with id {recording_id}")


def get_recording(session: Session, recording_id: int) -> RecordingView:
    rec = session.get(Recording, recording_id)
    if rec is None:
        raise LookupError(f"no recording with id {recording_id}")
    return _recording_view(rec)


def find_recording(
    session: Session, bucket: str, key: str, *, version_id: str | None, etag: str
) -> RecordingRef | None:
    """The recording row for an object version, if it was ever seen."""
    rec = session.execute(
        sa.select(Recording).where(
            Recording.bucket == bucket,
            Recording.key == key,
            Recording.object_version == object_version(version_id, etag),
        )
    ).scalar_one_or_none()
    return None if rec is None else _recording_ref(rec)


def is_finished(session: Session, bucket: str, key: str, *, version_id: str | None, etag: str) -> bool:
    """True when this object version was completed or rejected: a re-run skips it. New,
    failed or interrupted versions are not finished."""
    ref = find_recording(session, bucket, key, version_id=version_id, etag=etag)
    return ref is not None and ref.status in FINISHED_STATUSES


def find_completed_by_sha256(
    session: Session, sha256: str, *, exclude_recording_id: int | None = None
) -> RecordingRef | None:
    """A recording with the same bytes whose results are stored (completed, or stored and
    waiting for the dataset commit) and that has its own completed provider jobs (the
    original, not another reuse), newest first; None when the content is new."""
    has_jobs = sa.exists().where(
        ProviderJob.recording_id == Recording.id, ProviderJob.status == JobStatus.COMPLETED
    )
    stmt = (
        sa.select(Recording)
        .where(
            Recording.sha256 == sha256,
            Recording.status.in_((RecordingStatus.COMPLETED, RecordingStatus.STORED)),
            has_jobs,
        )
        .order_by(Recording.processed_at.desc(), Recording.id.desc())
        .limit(1)
    )
    if exclude_recording_id is not None:
        stmt = stmt.where(Recording.id != exclude_recording_id)
    rec = session.execute(stmt).scalar_one_or_none()
    return None if rec is None else _recording_ref(rec)


def record_reuse(
    session: Session,
    *,
    recording_id: int,
    source_recording_id: int,
    flow_run_id: str,
    now: dt.datetime | None = None,
) -> int:
    """Let `recording_id` stand on `source_recording_id`'s finished results (same SHA-256).

    Writes one `reused_from` lineage row per database output of the source's current jobs and
    marks the recording completed; returns the number of lineage rows. Nothing is copied, so
    the database holds each result once; `dataset_rows` and `timeline_for_uri` follow the link.
    """
    now = now or utcnow()
    jobs = _current_jobs(session, [source_recording_id]).get(source_recording_id, [])
    if not jobs:
        raise LookupError(f"recording {source_recording_id} has no completed jobs to reuse")
    produced = session.execute(
        sa.select(Lineage).where(
            Lineage.job_id.in_([j.id for j in jobs]),
            Lineage.kind == LineageKind.PRODUCED,
            Lineage.output_kind == OutputKind.DB,
        )
    ).scalars()
    entries = [
        LineageIn(
            kind=LineageKind.REUSED_FROM,
            recording_id=recording_id,
            output_kind=OutputKind.DB,
            table_name=row.table_name,
            output_uri=row.output_uri,
            job_id=row.job_id,
            flow_run_id=flow_run_id,
            source_recording_id=source_recording_id,
            row_count=row.row_count,
        )
        for row in produced
    ]
    count = add_lineage(session, entries, now=now)
    set_recording_status(session, recording_id, RecordingStatus.COMPLETED, at=now)
    return count


# --------------------------------------------------------------------------- provider jobs


def upsert_provider_job(session: Session, job: JobIn, *, now: dt.datetime | None = None) -> int:
    """Create or update the job keyed by (provider, external id); returns its id.

    Call it as soon as the provider answers with an id, so a re-run finds the job and resumes
    it (`find_resumable_job`) instead of paying for a new one. The run and task that first
    submitted it are kept when a later run updates it.
    """
    now = now or utcnow()
    row = {
        "recording_id": job.recording_id,
        "provider": job.provider,
        "model": job.model,
        "external_id": job.external_id,
        "channel": job.channel,
        "status": job.status,
        "attempts": job.attempts,
        "submitted_at": job.submitted_at or now,
        "completed_at": job.completed_at,
        "updated_at": now,
        "error_code": job.error_code,
        "error_message": _clean_text(job.error_message),
        "flow_run_id": job.flow_run_id,
        "task_run_id": job.task_run_id,
    }
    (returned,) = _upsert(
        session,
        ProviderJob,
        [row],
        key=("provider", "external_id"),
        update=("status", "attempts", "updated_at", "error_code", "error_message"),
        fill=("completed_at",),
        returning=("id",),
    )
    return int(returned.id)


def update_job(
    session: Session,
    job_id: int,
    *,
    status: JobStatus,
    attempts: int | None = None,
    completed_at: dt.datetime | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Record a job's progress. Completion and failure stamp `completed_at` when not given."""
    now = now or utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if attempts is not None:
        values["attempts"] = attempts
    if status in (JobStatus.COMPLETED, JobStatus.FAILED):
        values["completed_at"] = completed_at or now
    if status == JobStatus.FAILED or error_code or error_message:
        values["error_code"] = error_code
        values["error_message"] = _clean_text(error_message)
    result = session.execute(sa.update(ProviderJob).where(ProviderJob.id == job_id).values(**values))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LookupError(f"no provider job with id {job_id}")


def find_resumable_job(
    session: Session, recording_id: int, provider: Provider, *, model: str | None, channel: int | None = None
) -> JobRef | None:
    """The newest job of this recording/provider/model/channel that has not failed: a re-run
    polls or fetches it instead of submitting again. `model=None` (an upload that names no
    model) matches any model: the job's model is what its result showed."""
    channel_match = ProviderJob.channel.is_(None) if channel is None else ProviderJob.channel == channel
    model_match = sa.true() if model is None else ProviderJob.model == model
    job = session.execute(
        sa.select(ProviderJob)
        .where(
            ProviderJob.recording_id == recording_id,
            ProviderJob.provider == provider,
            model_match,
            channel_match,
            ProviderJob.status != JobStatus.FAILED,
        )
        .order_by(ProviderJob.submitted_at.desc(), ProviderJob.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if job is None:
        return None
    return JobRef(job.id, job.recording_id, job.provider, job.model, job.external_id, job.channel, job.status)


# --------------------------------------------------------------------------- results


def save_emotion_segments(
    session: Session, job_id: int, segments: Sequence[EmotionSegment], *, flow_run_id: str
) -> int:
    """Store one job's Valence timeline (see `save_timelines`); returns its segment count."""
    return save_timelines(session, {job_id: segments}, flow_run_id=flow_run_id)


def save_timelines(
    session: Session, timelines: Mapping[int, Sequence[EmotionSegment]], *, flow_run_id: str
) -> int:
    """Store Valence timelines for several jobs at once (idempotent on job + segment index),
    with a lineage row per job. Segments beyond a timeline's length are deleted, so storing a
    re-fetched result leaves exactly that result. Returns the number of segments."""
    jobs = _jobs(session, timelines)
    rows = [
        {
            "job_id": job_id,
            "segment_index": i,
            "start_s": seg.start_s,
            "end_s": seg.end_s,
            "emotion": seg.emotion,
            "confidence": seg.confidence,
            "all_predictions": seg.all_predictions,
        }
        for job_id in sorted(timelines)
        for i, seg in enumerate(timelines[job_id])
    ]
    values = ("start_s", "end_s", "emotion", "confidence", "all_predictions")
    _bulk_upsert(session, EmotionSegmentRow, rows, key=("job_id", "segment_index"), update=values)
    lengths = {job_id: len(segs) for job_id, segs in timelines.items()}
    _delete_beyond(session, EmotionSegmentRow, "segment_index", lengths)
    _record_db_outputs(session, [(jobs[j], "emotion_segments", n) for j, n in lengths.items()], flow_run_id)
    _learn_models(session, jobs, timelines)
    return len(rows)


def _learn_models(
    session: Session, jobs: Mapping[int, ProviderJob], timelines: Mapping[int, Sequence[EmotionSegment]]
) -> None:
    """A job that named no model (async upload) gets the one its timeline shows (the label
    set of its comprehensive predictions); without that evidence it stays NULL."""
    for job_id, segments in timelines.items():
        if jobs[job_id].model is None:
            model = timeline_model(segments)
            if model is not None:
                jobs[job_id].model = model


def save_prosody_result(session: Session, job_id: int, result: ProsodyResult, *, flow_run_id: str) -> int:
    """Store one job's Valsea result (see `save_prosody_results`); returns its utterance count."""
    return save_prosody_results(session, {job_id: result}, flow_run_id=flow_run_id)


def save_prosody_results(session: Session, results: Mapping[int, ProsodyResult], *, flow_run_id: str) -> int:
    """Store Valsea results for several jobs: the five summary scores and, when the result was
    verbose, each utterance with its expression scores. Idempotent; returns the utterance count."""
    jobs = _jobs(session, results)
    summaries = [
        {"job_id": job_id, **{m: getattr(results[job_id].emotions, m) for m in PROSODY_METRICS}}
        for job_id in sorted(results)
    ]
    _upsert(session, ProsodySummaryRow, summaries, key=("job_id",), update=PROSODY_METRICS)
    rows = [
        {
            "job_id": job_id,
            "utterance_index": i,
            "text": utt.text,
            "begin_s": utt.begin_s,
            "end_s": utt.end_s,
            "expressions": utt.expressions,
        }
        for job_id in sorted(results)
        for i, utt in enumerate(results[job_id].raw_predictions)
    ]
    values = ("text", "begin_s", "end_s", "expressions")
    _bulk_upsert(session, ProsodyUtteranceRow, rows, key=("job_id", "utterance_index"), update=values)
    lengths = {job_id: len(result.raw_predictions) for job_id, result in results.items()}
    _delete_beyond(session, ProsodyUtteranceRow, "utterance_index", lengths)
    outputs = [(jobs[j], "prosody_results", 1) for j in results]
    outputs += [(jobs[j], "prosody_utterances", n) for j, n in lengths.items() if n]
    _record_db_outputs(session, outputs, flow_run_id)
    return len(rows)


def _jobs(session: Session, job_ids: Iterable[int]) -> dict[int, ProviderJob]:
    wanted = set(job_ids)
    found = {
        job.id: job
        for job in session.execute(sa.select(ProviderJob).where(ProviderJob.id.in_(wanted))).scalars()
    }
    missing = wanted - set(found)
    if missing:
        raise LookupError(f"no provider job with id {sorted(missing)}")
    return found


def _delete_beyond(session: Session, model: type[Any], index_column: str, lengths: Mapping[int, int]) -> None:
    """Delete each job's rows at or past its new length (one executemany)."""
    table: sa.Table = model.__table__
    stmt = table.delete().where(
        table.c.job_id == sa.bindparam("j"), table.c[index_column] >= sa.bindparam("n")
    )
    session.execute(stmt, [{"j": job_id, "n": n} for job_id, n in sorted(lengths.items())])


def _record_db_outputs(
    session: Session, outputs: Sequence[tuple[ProviderJob, str, int]], flow_run_id: str
) -> None:
    add_lineage(
        session,
        [
            LineageIn(
                kind=LineageKind.PRODUCED,
                recording_id=job.recording_id,
                output_kind=OutputKind.DB,
                table_name=table,
                output_uri=db_output_uri(table, job.id),
                job_id=job.id,
                flow_run_id=flow_run_id,
                row_count=rows,
            )
            for job, table, rows in outputs
        ],
    )


# --------------------------------------------------------------------------- runs


def start_run(session: Session, run: RunStart) -> None:
    """Record a flow run as running (a retried flow run, same id, updates its row)."""
    row: dict[str, Any] = {
        "flow_run_id": run.flow_run_id,
        "deployment": run.deployment,
        "trigger": run.trigger,
        "status": RunStatus.RUNNING,
        "started_at": run.started_at or utcnow(),
        "ended_at": None,
        "counts": {},
        "code_version": run.code_version,
        "settings_hash": run.settings_hash,
    }
    update = ("status", "ended_at", "code_version", "settings_hash")
    _upsert(session, PipelineRun, [row], key=("flow_run_id",), update=update)


def finish_run(
    session: Session,
    flow_run_id: str,
    *,
    status: RunStatus,
    counts: dict[str, int],
    ended_at: dt.datetime | None = None,
) -> None:
    values = {"status": status, "counts": dict(counts), "ended_at": ended_at or utcnow()}
    result = session.execute(
        sa.update(PipelineRun).where(PipelineRun.flow_run_id == flow_run_id).values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LookupError(f"no pipeline run {flow_run_id}")


def running_run_ids(session: Session) -> list[str]:
    """Runs whose row still says `running` (live, or left behind by a process that died)."""
    return list(
        session.scalars(sa.select(PipelineRun.flow_run_id).where(PipelineRun.status == RunStatus.RUNNING))
    )


def end_running_run(
    session: Session, flow_run_id: str, *, status: RunStatus, now: dt.datetime | None = None
) -> bool:
    """Close one run's row with `status` if it still says `running` (a state hook calls this; it
    must never overwrite a run that closed itself). True when a row changed."""
    result = session.execute(
        sa.update(PipelineRun)
        .where(PipelineRun.flow_run_id == flow_run_id, PipelineRun.status == RunStatus.RUNNING)
        .values(status=status, ended_at=now or utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def close_stale_runs(
    session: Session,
    *,
    started_before: dt.datetime,
    final_flow_runs: Iterable[str] = (),
    keep: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> list[str]:
    """Mark `crashed` the runs still `running` that started before `started_before` or whose
    Prefect flow run is already final (`final_flow_runs`: the orchestrator knows the process is
    gone). `keep` (the caller's own run) is never touched. Returns the ids closed, sorted.

    A process killed outright (SIGKILL, OOM, a lost machine) runs no hook; this is how the
    next run closes its row instead of leaving it `running` for ever.
    """
    stale = PipelineRun.started_at < started_before
    final = list(final_flow_runs)
    if final:
        stale = sa.or_(stale, PipelineRun.flow_run_id.in_(final))
    query = sa.select(PipelineRun.flow_run_id).where(PipelineRun.status == RunStatus.RUNNING, stale)
    kept = list(keep)
    if kept:
        query = query.where(PipelineRun.flow_run_id.not_in(kept))
    ids = sorted(session.scalars(query))
    if ids:
        session.execute(
            sa.update(PipelineRun)
            .where(PipelineRun.flow_run_id.in_(ids), PipelineRun.status == RunStatus.RUNNING)
            .values(status=RunStatus.CRASHED, ended_at=now or utcnow())
        )
    return ids


# --------------------------------------------------------------------------- lineage


def lineage_key(kind: LineageKind, recording_id: int, job_id: int | None, output_uri: str) -> str:
    """Natural key of a lineage row, hashed so the unique index stays small whatever the URI."""
    raw = f"{kind.value}|{recording_id}|{'' if job_id is None else job_id}|{output_uri}"
    return hashlib.sha256(raw.encode()).hexdigest()


def add_lineage(session: Session, entries: Sequence[LineageIn], *, now: dt.datetime | None = None) -> int:
    """Upsert lineage rows (a repeated entry refreshes run, row count, and un-supersedes)."""
    now = now or utcnow()
    rows = [
        {
            "key_hash": lineage_key(e.kind, e.recording_id, e.job_id, e.output_uri),
            "kind": e.kind,
            "recording_id": e.recording_id,
            "job_id": e.job_id,
            "flow_run_id": e.flow_run_id,
            "source_recording_id": e.source_recording_id,
            "output_kind": e.output_kind,
            "table_name": e.table_name,
            "output_uri": _check_output_uri(e.output_uri),
            "row_count": e.row_count,
            "table_version": e.table_version,
            "created_at": e.created_at or now,
            "superseded_at": None,
        }
        for e in entries
    ]
    rows = _dedupe(rows, ("key_hash",))
    _upsert(
        session,
        Lineage,
        rows,
        key=("key_hash",),
        update=("flow_run_id", "row_count", "table_version", "superseded_at"),
    )
    return len(rows)


def record_dataset_commit(
    session: Session, commits: CommitResult | Iterable[TableCommit], *, now: dt.datetime | None = None
) -> int:
    """Bring dataset lineage in line with Delta commits (a run's export, or a compaction);
    returns the lineage rows written.

    Each added file gets one `produced` row per (recording, job, run) it holds, with the table
    version of the commit that added it. Rows on a removed file move to the new file when the
    same (recording, job, run) rows are in the commit's added files (a rewrite or a
    compaction carried them over); the others were replaced by a newer run's rows and are
    marked superseded (the old file still holds them at earlier versions until vacuum).
    """
    now = now or utcnow()
    tables = commits.tables if isinstance(commits, CommitResult) else tuple(commits)
    written = 0
    for commit in tables:
        carried = {(s.recording_id, s.job_id, s.run_id) for f in commit.added for s in f.sources}
        created: dict[tuple[int, int | None, str | None], dt.datetime] = {}
        for start in range(0, len(commit.removed), EXPORT_CHUNK):
            old = session.execute(
                sa.select(Lineage).where(
                    Lineage.output_kind == OutputKind.PARQUET,
                    Lineage.table_name == commit.table,
                    Lineage.output_uri.in_(commit.removed[start : start + EXPORT_CHUNK]),
                    Lineage.superseded_at.is_(None),
                )
            ).scalars()
            for row in old:
                key = (row.recording_id, row.job_id, row.flow_run_id)
                if key in carried:
                    created[key] = min(created.get(key, row.created_at), row.created_at)
                    session.delete(row)
                else:
                    row.superseded_at = now
        session.flush()
        runs = {s.run_id for f in commit.added for s in f.sources if s.run_id}
        known_runs = set(
            session.execute(
                sa.select(PipelineRun.flow_run_id).where(PipelineRun.flow_run_id.in_(runs))
            ).scalars()
        )
        entries = [
            LineageIn(
                kind=LineageKind.PRODUCED,
                recording_id=src.recording_id,
                output_kind=OutputKind.PARQUET,
                table_name=commit.table,
                output_uri=file.uri,
                job_id=src.job_id,
                flow_run_id=src.run_id if src.run_id in known_runs else None,
                row_count=src.rows,
                table_version=commit.version,
                created_at=created.get((src.recording_id, src.job_id, src.run_id)),
            )
            for file in commit.added
            for src in file.sources
        ]
        written += add_lineage(session, entries, now=now)
    return written


# --------------------------------------------------------------------------- current results


def _current_jobs(session: Session, recording_ids: Sequence[int]) -> dict[int, list[ProviderJob]]:
    """The jobs whose results stand for each recording: per provider and channel, the newest
    completed job of the recording itself or, failing that, of what it reuses."""
    if not recording_ids:
        return {}
    own = session.execute(
        sa.select(ProviderJob).where(
            ProviderJob.recording_id.in_(recording_ids), ProviderJob.status == JobStatus.COMPLETED
        )
    ).scalars()
    reused = session.execute(
        sa.select(Lineage.recording_id, ProviderJob)
        .join(ProviderJob, ProviderJob.id == Lineage.job_id)
        .where(
            Lineage.recording_id.in_(recording_ids),
            Lineage.kind == LineageKind.REUSED_FROM,
            ProviderJob.status == JobStatus.COMPLETED,
        )
    ).all()
    chosen: dict[int, dict[tuple[Provider, int | None], ProviderJob]] = {}
    for job in own:
        _keep_newest(chosen.setdefault(job.recording_id, {}), job)
    for recording_id, job in reused:
        slot = chosen.setdefault(recording_id, {})
        # A recording's own results win over reused ones for the same provider.
        if any(held.recording_id == recording_id and held.provider == job.provider for held in slot.values()):
            continue
        _keep_newest(slot, job)
    return {
        rid: sorted(slot.values(), key=lambda j: (j.provider.value, _channel_order(j.channel)))
        for rid, slot in chosen.items()
    }


def current_jobs(session: Session, recording_ids: Sequence[int]) -> dict[int, list[ProviderJob]]:
    """The jobs whose results stand for each recording (see `_current_jobs`), for readers such
    as the per-call analytics."""
    return _current_jobs(session, recording_ids)


def _keep_newest(slot: dict[tuple[Provider, int | None], ProviderJob], job: ProviderJob) -> None:
    key = (job.provider, job.channel)
    held = slot.get(key)
    if held is None or (job.completed_at or job.submitted_at, job.id) > (
        held.completed_at or held.submitted_at,
        held.id,
    ):
        slot[key] = job


def _channel_order(channel: int | None) -> int:
    return -1 if channel is None else channel


def dataset_rows(session: Session, recording_ids: Sequence[int]) -> DatasetRows:
    """The dataset rows for these recordings, straight from the database: the recording row
    and the results of each recording's current jobs (see `_current_jobs`)."""
    out = DatasetRows()
    ids = sorted(set(recording_ids))
    # Chunked: SQLite caps the bound parameters of one statement (the IN lists).
    for start in range(0, len(ids), EXPORT_CHUNK):
        part = _dataset_rows_chunk(session, ids[start : start + EXPORT_CHUNK])
        out.recordings.extend(part.recordings)
        out.emotion_segments.extend(part.emotion_segments)
        out.prosody_summaries.extend(part.prosody_summaries)
        out.prosody_utterances.extend(part.prosody_utterances)
    return out


def _dataset_rows_chunk(session: Session, recording_ids: Sequence[int]) -> DatasetRows:
    recordings = {
        r.id: r
        for r in session.execute(sa.select(Recording).where(Recording.id.in_(recording_ids))).scalars()
    }
    jobs = _current_jobs(session, list(recordings))
    out = DatasetRows(recordings=[_recording_record(recordings[rid]) for rid in sorted(recordings)])
    # A job reused by several recordings yields its rows once under each of them.
    job_by_id: dict[int, ProviderJob] = {}
    owners_of: dict[int, list[int]] = {}
    for rid in sorted(jobs):
        for job in jobs[rid]:
            job_by_id[job.id] = job
            owners_of.setdefault(job.id, []).append(rid)
    if not job_by_id:
        return out
    segments = session.execute(
        sa.select(EmotionSegmentRow)
        .where(EmotionSegmentRow.job_id.in_(job_by_id))
        .order_by(EmotionSegmentRow.job_id, EmotionSegmentRow.segment_index)
        .execution_options(yield_per=EXPORT_FETCH_ROWS)
    ).scalars()
    summaries = session.execute(
        sa.select(ProsodySummaryRow)
        .where(ProsodySummaryRow.job_id.in_(job_by_id))
        .order_by(ProsodySummaryRow.job_id)
    ).scalars()
    utterances = session.execute(
        sa.select(ProsodyUtteranceRow)
        .where(ProsodyUtteranceRow.job_id.in_(job_by_id))
        .order_by(ProsodyUtteranceRow.job_id, ProsodyUtteranceRow.utterance_index)
        .execution_options(yield_per=EXPORT_FETCH_ROWS)
    ).scalars()
    for seg in segments:
        for rid in owners_of[seg.job_id]:
            out.emotion_segments.append(_segment_record(recordings[rid], job_by_id[seg.job_id], seg))
    for summ in summaries:
        for rid in owners_of[summ.job_id]:
            out.prosody_summaries.append(_summary_record(recordings[rid], job_by_id[summ.job_id], summ))
    for utt in utterances:
        for rid in owners_of[utt.job_id]:
            out.prosody_utterances.append(_utterance_record(recordings[rid], job_by_id[utt.job_id], utt))
    return out


def _recording_record(rec: Recording) -> RecordingRecord:
    return RecordingRecord(
        recording_id=rec.id,
        source_uri=rec.uri,
        source_version=rec.object_version,
        bucket=rec.bucket,
        key=rec.key,
        version_id=rec.version_id,
        etag=rec.etag,
        size_bytes=rec.size_bytes,
        sha256=rec.sha256,
        content_type=rec.content_type,
        duration_s=rec.duration_s,
        sample_rate=rec.sample_rate,
        channels=rec.channels,
        status=rec.status.value,
        reason=rec.reason,
        discovered_at=rec.discovered_at,
        processed_at=rec.processed_at,
    )


def _job_columns(rec: Recording, job: ProviderJob) -> dict[str, Any]:
    return {
        "recording_id": rec.id,
        "source_uri": rec.uri,
        "source_version": rec.object_version,
        "provider_job_id": job.id,
        "external_job_id": job.external_id,
        "model": job.model,
        "channel": job.channel,
        "provider": job.provider.value,
    }


def _segment_record(rec: Recording, job: ProviderJob, seg: EmotionSegmentRow) -> EmotionSegmentRecord:
    return EmotionSegmentRecord(
        **_job_columns(rec, job),
        segment_index=seg.segment_index,
        start_s=seg.start_s,
        end_s=seg.end_s,
        emotion=seg.emotion,
        confidence=seg.confidence,
        all_predictions=seg.all_predictions,
    )


def _summary_record(rec: Recording, job: ProviderJob, summ: ProsodySummaryRow) -> ProsodySummaryRecord:
    return ProsodySummaryRecord(**_job_columns(rec, job), **{m: getattr(summ, m) for m in PROSODY_METRICS})


def _utterance_record(rec: Recording, job: ProviderJob, utt: ProsodyUtteranceRow) -> ProsodyUtteranceRecord:
    return ProsodyUtteranceRecord(
        **_job_columns(rec, job),
        utterance_index=utt.utterance_index,
        text=utt.text,
        begin_s=utt.begin_s,
        end_s=utt.end_s,
        expressions=utt.expressions,
    )


# --------------------------------------------------------------------------- CLI queries


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or not key:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    return bucket, key


def _versions(session: Session, uri: str, version: str | None) -> list[Recording]:
    """Recordings for an s3:// URI, newest first; `version` matches a version id or ETag."""
    bucket, key = parse_s3_uri(uri)
    stmt = sa.select(Recording).where(Recording.bucket == bucket, Recording.key == key)
    if version is not None:
        etag_token = f"etag:{version.strip().strip(chr(34))}"
        stmt = stmt.where(sa.or_(Recording.object_version == version, Recording.object_version == etag_token))
    return list(session.execute(stmt.order_by(Recording.discovered_at.desc(), Recording.id.desc())).scalars())


def lineage_for_uri(session: Session, uri: str, *, version: str | None = None) -> list[RecordingLineage]:
    """The whole chain for each version of an object (newest first): the object version, its
    provider jobs, their outputs (database rows, dataset files with their table version, reuse
    links) and the runs."""
    out = []
    for rec in _versions(session, uri, version):
        outputs = list(
            session.execute(
                sa.select(Lineage)
                .where(Lineage.recording_id == rec.id)
                .order_by(Lineage.created_at, Lineage.id)
            ).scalars()
        )
        job_ids = {o.job_id for o in outputs if o.job_id is not None}
        jobs = session.execute(
            sa.select(ProviderJob)
            .where(sa.or_(ProviderJob.recording_id == rec.id, ProviderJob.id.in_(job_ids)))
            .order_by(ProviderJob.submitted_at, ProviderJob.id)
        ).scalars()
        job_views = [_job_view(j) for j in jobs]
        run_ids = {o.flow_run_id for o in outputs} | {j.flow_run_id for j in job_views}
        runs = session.execute(
            sa.select(PipelineRun)
            .where(PipelineRun.flow_run_id.in_({r for r in run_ids if r}))
            .order_by(PipelineRun.started_at)
        ).scalars()
        sources = {o.source_recording_id for o in outputs if o.source_recording_id is not None}
        reused = [_recording_view(r) for r in _recordings_by_id(session, sources)]
        out.append(
            RecordingLineage(
                recording=_recording_view(rec),
                jobs=job_views,
                outputs=[_output_view(o) for o in outputs],
                runs=[_run_view(r) for r in runs],
                reused_from=reused,
            )
        )
    return out


def timeline_for_uri(session: Session, uri: str, *, version: str | None = None) -> Timeline | None:
    """The emotion timeline of the newest (or the given) version, with its prosody; None when
    the object was never seen."""
    versions = _versions(session, uri, version)
    if not versions:
        return None
    rec = versions[0]
    jobs = _current_jobs(session, [rec.id]).get(rec.id, [])
    by_id = {j.id: j for j in jobs}
    segments = session.execute(
        sa.select(EmotionSegmentRow)
        .where(EmotionSegmentRow.job_id.in_(by_id))
        .order_by(EmotionSegmentRow.start_s, EmotionSegmentRow.job_id)
    ).scalars()
    utterances = session.execute(
        sa.select(ProsodyUtteranceRow)
        .where(ProsodyUtteranceRow.job_id.in_(by_id))
        .order_by(ProsodyUtteranceRow.begin_s, ProsodyUtteranceRow.job_id)
    ).scalars()
    summaries = session.execute(
        sa.select(ProsodySummaryRow)
        .where(ProsodySummaryRow.job_id.in_(by_id))
        .order_by(ProsodySummaryRow.job_id)
    ).scalars()
    source_ids = {j.recording_id for j in jobs if j.recording_id != rec.id}
    sources = _recordings_by_id(session, source_ids)
    return Timeline(
        recording=_recording_view(rec),
        segments=[
            SegmentView(by_id[s.job_id].channel, s.start_s, s.end_s, s.emotion, s.confidence)
            for s in segments
        ],
        utterances=[
            UtteranceView(by_id[u.job_id].channel, u.begin_s, u.end_s, u.text, dict(u.expressions))
            for u in utterances
        ],
        summaries=[
            SummaryView(
                by_id[s.job_id].channel,
                by_id[s.job_id].external_id,
                {m: getattr(s, m) for m in PROSODY_METRICS},
            )
            for s in summaries
        ],
        reused_from=_recording_view(sources[0]) if sources else None,
    )


def _recordings_by_id(session: Session, ids: Iterable[int]) -> list[Recording]:
    ids = list(ids)
    if not ids:
        return []
    return list(
        session.execute(sa.select(Recording).where(Recording.id.in_(ids)).order_by(Recording.id)).scalars()
    )


def _recording_ref(rec: Recording) -> RecordingRef:
    return RecordingRef(rec.id, rec.bucket, rec.key, rec.object_version, rec.status)


def _view(cls: type[_V], row: Any, **computed: Any) -> _V:
    """A read-only view of an ORM row: same-named attributes copied, the rest given."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in computed]
    return cls(**{name: getattr(row, name) for name in names}, **computed)


def _recording_view(rec: Recording) -> RecordingView:
    return _view(RecordingView, rec, uri=s3_uri(rec.bucket, rec.key))


def _job_view(job: ProviderJob) -> JobView:
    return _view(JobView, job)


def _output_view(row: Lineage) -> OutputView:
    return _view(OutputView, row, uri=row.output_uri)


def _run_view(run: PipelineRun) -> RunView:
    return _view(RunView, run, counts=dict(run.counts))
