"""The pipeline's one door to the results store: every state a recording and a job move through.

The database, not a process, knows where each recording is. Each method is one short
transaction that moves one thing one step, idempotently, so a worker that dies between two
calls leaves every earlier fact committed and any worker resumes from them:

  recording  discovered -> accepted | rejected -> uploading -> submitted -> stored -> completed
             (failed with its reason from any step; superseded if the object changed under us)
  job        uploading (provider id stored before any byte goes up) -> submitted -> completed
             (results stored in the same transaction) | failed | unknown (a call without an
             idempotency key whose answer was lost, or whose worker died before storing it)

Work is claimed with leases: a recording (or a job being harvested) belongs to one worker until
its lease runs out, and a worker that stopped renewing loses it to whoever comes next.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from results_store import repository as repo
from results_store.db import RECONNECT_WAIT_S, Store, get_store
from results_store.models import (
    FINISHED_STATUSES,
    TERMINAL_STATUSES,
    DatasetTable,
    JobStatus,
    PipelineRun,
    Provider,
    ProviderJob,
    Recording,
    RecordingStatus,
    RunStatus,
    RunTrigger,
    object_version,
    s3_uri,
)
from results_store.records import JobIn, JobRef, RecordingIn, RunStart
from valence_client.models import EmotionSegment, ProsodyResult
from valence_pipeline.audio import AudioInfo
from valence_pipeline.preflight import Preflight
from valence_pipeline.s3 import NULL_VERSION, ObjectVersion
from valence_pipeline.work import DueJob, RecordingState, WorkItem

log = logging.getLogger(__name__)
T = TypeVar("T")

ExtraRows = Callable[[Session, Sequence[int]], list[tuple[DatasetTable, list[Any]]]]
"""More dataset rows for some recordings, from a room above this one (per-call analytics)."""

IN_FLIGHT = (RecordingStatus.UPLOADING, RecordingStatus.SUBMITTED)
EXPORT_CHUNK = 250
"""Recordings per dataset commit."""
WAITING_JOBS = (JobStatus.SUBMITTED, JobStatus.PROCESSING)
JOB_FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.UNKNOWN)


class ContentClaim(NamedTuple):
    """Who pays for a recording's bytes (see `PipelineStore.take_content`)."""

    action: Literal["reuse", "wait", "go"]
    twin: str | None
    """The URI of the recording whose results are reused or awaited."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _at(unix: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix, dt.UTC)


def _version_id(obj: ObjectVersion) -> str | None:
    return obj.version_id if obj.version_id and obj.version_id != NULL_VERSION else None


def _obj(rec: Recording) -> ObjectVersion:
    return ObjectVersion(
        bucket=rec.bucket,
        key=rec.key,
        version_id=rec.version_id or NULL_VERSION,
        etag=rec.etag,
        size=rec.size_bytes,
        last_modified=rec.discovered_at,
    )


def _state(rec: Recording) -> RecordingState:
    info = AudioInfo(**rec.audio) if rec.audio else None
    return RecordingState(
        id=rec.id,
        obj=_obj(rec),
        status=rec.status.value,
        attempts=rec.attempts,
        info=info,
        sha256=rec.sha256,
        route=rec.route,  # type: ignore[arg-type]
    )


def _lease_free(model: Any, worker: str, now: dt.datetime) -> Any:
    return sa.or_(model.lease_until.is_(None), model.lease_until < now, model.claimed_by == worker)


class PipelineStore:
    def __init__(self, url: str, reconnect_wait_s: float = RECONNECT_WAIT_S) -> None:
        # refuses a database whose schema is behind
        self.store: Store = get_store(url, reconnect_wait_s)

    # --- runs ----------------------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        *,
        trigger: str,
        deployment: str | None,
        code_version: str,
        settings_hash: str,
        parent_run_id: str | None = None,
        audio_budget_s: float | None = None,
    ) -> None:
        run = RunStart(
            flow_run_id=run_id,
            trigger=RunTrigger(trigger),
            code_version=code_version,
            settings_hash=settings_hash,
            deployment=deployment,
        )
        with self.store.session_scope() as s:
            repo.start_run(s, run)
            row = s.get(PipelineRun, run_id)
            assert row is not None
            row.parent_run_id = parent_run_id
            if parent_run_id is None:
                row.audio_budget_s = audio_budget_s

    def finish_run(self, run_id: str, counts: dict[str, Any], failed: bool = False) -> None:
        numeric = {
            k: int(v) for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        with self.store.session_scope() as s:
            repo.finish_run(
                s, run_id, status=RunStatus.FAILED if failed else RunStatus.COMPLETED, counts=numeric
            )

    def child_counts(self, run_id: str) -> dict[str, int]:
        """The API counters of a night's batch runs, added up (for the night's summary)."""
        total: Counter[str] = Counter()
        with self.store.session_scope() as s:
            for counts in s.scalars(sa.select(PipelineRun.counts).where(PipelineRun.parent_run_id == run_id)):
                total.update(
                    {k: int(v) for k, v in (counts or {}).items() if k.startswith(("valence_", "valsea_"))}
                )
        return dict(total)

    def run_flags(self, run_id: str) -> dict[str, Any]:
        with self.store.session_scope() as s:
            row = s.get(PipelineRun, run_id)
            return dict(row.flags or {}) if row is not None else {}

    def set_run_flag(self, run_id: str, flag: str, note: str) -> None:
        """A run-scoped fact every worker of the run obeys from now on (e.g. Valsea out of
        credits), with the note the run's summary shows."""
        with self.store.session_scope() as s:
            row = s.get(PipelineRun, run_id)
            if row is None:
                return
            flags = dict(row.flags or {})
            if flags.get(flag):
                return
            flags[flag] = True
            flags["notes"] = [*flags.get("notes", []), note]
            row.flags = flags

    def reserve_audio(self, run_id: str, seconds: float) -> bool:
        """Take `seconds` of the run's audio budget; False when it would go over (the recording
        waits for a later run). One conditional UPDATE, so workers never overspend together."""
        with self.store.session_scope() as s:
            result = s.execute(
                sa.update(PipelineRun)
                .where(
                    PipelineRun.flow_run_id == run_id,
                    sa.or_(
                        PipelineRun.audio_budget_s.is_(None),
                        PipelineRun.audio_reserved_s + seconds <= PipelineRun.audio_budget_s,
                    ),
                )
                .values(audio_reserved_s=PipelineRun.audio_reserved_s + seconds)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- recordings: discovery and claims -------------------------------------------------
    def register(self, objects: Sequence[ObjectVersion], run_id: str) -> list[int]:
        """Record listed object versions (one bulk upsert) and take the unfinished ones on for
        `run_id`; returns their ids in input order. Finished versions cost nothing more."""
        recordings = [
            RecordingIn(
                bucket=o.bucket,
                key=o.key,
                etag=o.etag,
                size_bytes=o.size,
                version_id=_version_id(o),
                discovered_at=o.last_modified,
            )
            for o in objects
        ]
        with self.store.session_scope() as s:
            refs = repo.upsert_recordings(s, recordings)
            todo = [r.id for r in refs if r.status not in FINISHED_STATUSES]
            for chunk in _in_chunks(todo, 500):
                s.execute(sa.update(Recording).where(Recording.id.in_(chunk)).values(run_id=run_id))
            return todo

    def taken_by(self, run_id: str) -> list[int]:
        """The unfinished recordings registered for `run_id`, oldest first (arrival order: what
        a budget of files or audio hours works through first)."""
        with self.store.session_scope() as s:
            return list(
                s.scalars(
                    sa.select(Recording.id)
                    .where(Recording.run_id == run_id, Recording.status.not_in(FINISHED_STATUSES))
                    .order_by(Recording.discovered_at, Recording.bucket, Recording.key, Recording.id)
                )
            )

    def unfinished(self, objects: Sequence[ObjectVersion]) -> list[ObjectVersion]:
        """The object versions not completed or rejected yet (a re-run skips those), in order:
        one query per 500 keys, not one per object (a night lists thousands)."""
        finished: set[tuple[str, str, str]] = set()
        by_bucket: dict[str, list[str]] = {}
        for obj in objects:
            by_bucket.setdefault(obj.bucket, []).append(obj.key)
        with self.store.session_scope() as s:
            for bucket, keys in by_bucket.items():
                for chunk in _in_chunks(sorted(set(keys)), 500):
                    rows = s.execute(
                        sa.select(Recording.key, Recording.object_version).where(
                            Recording.bucket == bucket,
                            Recording.key.in_(chunk),
                            Recording.status.in_(FINISHED_STATUSES),
                        )
                    )
                    finished.update((bucket, key, version) for key, version in rows)
        return [
            o for o in objects if (o.bucket, o.key, object_version(_version_id(o), o.etag)) not in finished
        ]

    def claim(self, recording_id: int, worker: str, lease_s: float) -> RecordingState | None:
        """Take the recording for `lease_s` unless another worker holds a live lease; None when
        someone else has it or there is nothing left to do for it."""
        now = utcnow()
        with self.store.session_scope() as s:
            claimed = s.execute(
                sa.update(Recording)
                .where(Recording.id == recording_id, _lease_free(Recording, worker, now))
                .values(claimed_by=worker, lease_until=now + dt.timedelta(seconds=lease_s))
            ).rowcount  # type: ignore[attr-defined]
            if not claimed:
                return None
            rec = s.get(Recording, recording_id)
            assert rec is not None
            return _state(rec)

    def renew(self, recording_ids: Iterable[int], worker: str, lease_s: float) -> None:
        until = utcnow() + dt.timedelta(seconds=lease_s)
        ids = list(recording_ids)
        with self.store.session_scope() as s:
            for chunk in _in_chunks(ids, 500):
                s.execute(
                    sa.update(Recording)
                    .where(Recording.id.in_(chunk), Recording.claimed_by == worker)
                    .values(lease_until=until)
                )

    def release(self, recording_id: int, worker: str) -> None:
        with self.store.session_scope() as s:
            s.execute(
                sa.update(Recording)
                .where(Recording.id == recording_id, Recording.claimed_by == worker)
                .values(claimed_by=None, lease_until=None)
            )

    def unclaimed(
        self, recording_ids: Sequence[int], worker: str, *, abandoned_only: bool = False
    ) -> list[int]:
        """Those of `recording_ids` with work left that nobody else holds: never taken on, or
        whose worker stopped renewing its lease (it died). `abandoned_only` keeps the second
        kind. The caller takes them over."""
        now = utcnow()
        expired = sa.and_(Recording.claimed_by != worker, Recording.lease_until < now)
        free = expired if abandoned_only else sa.or_(Recording.claimed_by.is_(None), expired)
        out: list[int] = []
        with self.store.session_scope() as s:
            for chunk in _in_chunks(list(recording_ids), 500):
                out += s.scalars(
                    sa.select(Recording.id).where(
                        Recording.id.in_(chunk),
                        # Submitted ones wait on the harvest, which any worker runs: no holder.
                        Recording.status.not_in((*TERMINAL_STATUSES, RecordingStatus.SUBMITTED)),
                        free,
                    )
                ).all()
        return out

    def finishable(self, recording_ids: Sequence[int]) -> list[int]:
        """Submitted recordings none of whose jobs waits any more: their last harvester died
        before it could finish them (taking them on again finishes them)."""
        waiting = sa.exists().where(
            ProviderJob.recording_id == Recording.id,
            ProviderJob.status.in_((*WAITING_JOBS, JobStatus.UPLOADING)),
        )
        out: list[int] = []
        with self.store.session_scope() as s:
            for chunk in _in_chunks(list(recording_ids), 500):
                out += s.scalars(
                    sa.select(Recording.id).where(
                        Recording.id.in_(chunk), Recording.status == RecordingStatus.SUBMITTED, ~waiting
                    )
                ).all()
        return out

    def statuses(self, recording_ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        with self.store.session_scope() as s:
            for chunk in _in_chunks(list(recording_ids), 500):
                out.update(
                    (rid, status.value)
                    for rid, status in s.execute(
                        sa.select(Recording.id, Recording.status).where(Recording.id.in_(chunk))
                    ).all()
                )
        return out

    # --- recordings: steps ----------------------------------------------------------------
    def record_verdict(self, recording_id: int, verdict: Preflight) -> None:
        """Preflight's verdict: accepted (with what it learned) or rejected with its reason."""
        info = verdict.info
        with self.store.session_scope() as s:
            rec = s.get(Recording, recording_id)
            assert rec is not None
            if info is not None:
                rec.audio = dataclasses.asdict(info)
                rec.content_type = f"audio/{info.format.lower()}"
                rec.duration_s = info.duration_s
                rec.sample_rate = info.samplerate
                rec.channels = info.channels
            rec.sha256 = verdict.sha256 or rec.sha256
            rec.route = verdict.route
            rec.attempts = 0
            rec.next_attempt_at = None
            status = RecordingStatus.ACCEPTED if verdict.accepted else RecordingStatus.REJECTED
            repo.set_recording_status(s, recording_id, status, reason=verdict.reason)

    def set_status(self, recording_id: int, status: str, reason: str | None = None) -> None:
        with self.store.session_scope() as s:
            repo.set_recording_status(s, recording_id, RecordingStatus(status), reason=reason)

    def retry_later(self, recording_id: int, error: str, *, max_attempts: int, delay_s: float) -> bool:
        """A step failed with an error that may pass: count the attempt and say when to try
        again; True if it will be retried, False when the attempts are spent (then failed)."""
        with self.store.session_scope() as s:
            rec = s.get(Recording, recording_id)
            assert rec is not None
            rec.attempts += 1
            if rec.attempts < max_attempts:
                rec.next_attempt_at = utcnow() + dt.timedelta(seconds=delay_s)
                return True
            repo.set_recording_status(
                s, recording_id, RecordingStatus.FAILED, reason=f"{error} (after {rec.attempts} attempts)"
            )
            return False

    def fail(self, recording_id: int, reason: str) -> None:
        with self.store.session_scope() as s:
            repo.set_recording_status(s, recording_id, RecordingStatus.FAILED, reason=reason)

    def take_content(self, recording_id: int, sha256: str, run_id: str) -> ContentClaim:
        """Decide, in one transaction, who pays for these bytes: reuse the stored results of a
        recording with the same bytes ("reuse"); wait for a twin that is taking them to the
        providers ("wait"); or become that recording ("go", now `uploading`).

        One transaction, because a twin can move from in flight to stored between two: checked
        apart, the stored-results lookup can miss it while it is still in flight and the
        in-flight lookup miss it once it is stored, and the bytes are paid twice (CI saw it).
        Every recording with this checksum is locked in id order first (PostgreSQL; SQLite
        holds the write lock from BEGIN IMMEDIATE), so two workers checking twins at once
        cannot both go ahead."""
        with self.store.session_scope() as s:
            rows = s.execute(
                sa.select(Recording.id, Recording.status, Recording.bucket, Recording.key)
                .where(Recording.sha256 == sha256)
                .order_by(Recording.id)
                .with_for_update()
            ).all()
            source = repo.find_completed_by_sha256(s, sha256, exclude_recording_id=recording_id)
            if source is not None:
                repo.record_reuse(
                    s, recording_id=recording_id, source_recording_id=source.id, flow_run_id=run_id
                )
                # Stored, not completed: the dataset commit still has to take it in.
                repo.set_recording_status(s, recording_id, RecordingStatus.STORED)
                return ContentClaim("reuse", source.uri)
            for row in rows:
                if row.id != recording_id and row.status in IN_FLIGHT:
                    return ContentClaim("wait", f"s3://{row.bucket}/{row.key}")
            repo.set_recording_status(s, recording_id, RecordingStatus.UPLOADING)
            return ContentClaim("go", None)

    def failed_object_versions(self, limit: int | None) -> list[ObjectVersion]:
        query = sa.select(Recording).where(Recording.status == RecordingStatus.FAILED).order_by(Recording.id)
        with self.store.session_scope() as s:
            return [_obj(r) for r in s.scalars(query.limit(limit) if limit else query).all()]

    # --- provider jobs --------------------------------------------------------------------
    def latest_job(self, item: WorkItem) -> JobRef | None:
        """The newest job for this call that did not fail: resumed, never paid again."""
        with self.store.session_scope() as s:
            return repo.find_resumable_job(
                s,
                item.recording_id,
                Provider(item.provider),
                model=item.requested_model,
                channel=item.channel,
            )

    def record_job(
        self,
        item: WorkItem,
        *,
        external_id: str,
        status: JobStatus,
        run_id: str | None,
        next_poll_at: float | None,
        attempts: int = 1,
    ) -> int:
        """Store a job the moment its provider id is known; moves the recording along too."""
        job = JobIn(
            recording_id=item.recording_id,
            provider=Provider(item.provider),
            model=item.requested_model,
            external_id=external_id,
            status=status,
            channel=item.channel,
            attempts=attempts,
            flow_run_id=run_id,
        )
        with self.store.session_scope() as s:
            job_id = repo.upsert_provider_job(s, job)
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(next_poll_at=None if next_poll_at is None else _at(next_poll_at))
            )
            # In flight; `submitted` only once every call is at its provider (see `finalize`).
            rec = s.get(Recording, item.recording_id)
            assert rec is not None
            if rec.status in (RecordingStatus.ACCEPTED, RecordingStatus.FAILED):
                repo.set_recording_status(s, item.recording_id, RecordingStatus.UPLOADING)
            return job_id

    def job_submitted(self, job_id: int, next_poll_at: float) -> None:
        with self.store.session_scope() as s:
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(status=JobStatus.SUBMITTED, next_poll_at=_at(next_poll_at), updated_at=utcnow())
            )

    def record_failure(
        self, item: WorkItem, *, error_code: str, error_message: str, run_id: str | None
    ) -> int:
        """A call that failed before the provider gave it an id still gets a row (and a reason)."""
        job = JobIn(
            recording_id=item.recording_id,
            provider=Provider(item.provider),
            model=item.requested_model,
            external_id=f"unsubmitted:{uuid.uuid4()}",
            status=JobStatus.FAILED,
            channel=item.channel,
            error_code=error_code,
            error_message=error_message[:2000],
            flow_run_id=run_id,
        )
        with self.store.session_scope() as s:
            return repo.upsert_provider_job(s, job)

    def job_sent(self, job_id: int, *, external_id: str, next_poll_at: float, attempts: int = 1) -> None:
        """The provider accepted the call: its id replaces the placeholder of the intent.
        Replayed if the database drops the connection: losing this id would leave a paid job
        whose outcome looks unknown."""

        def work(s: Session) -> None:
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(
                    external_id=external_id,
                    status=JobStatus.SUBMITTED,
                    attempts=attempts,
                    error_code=None,
                    error_message=None,
                    next_poll_at=_at(next_poll_at),
                    updated_at=utcnow(),
                )
            )

        self.store.transaction(work)

    def drop_job(self, job_id: int) -> None:
        """An intent that certainly never reached the provider leaves no job behind (replayed on
        connection loss: a lost delete would leave the call's outcome looking unknown)."""
        self.store.transaction(lambda s: s.execute(sa.delete(ProviderJob).where(ProviderJob.id == job_id)))

    def record_sending(self, item: WorkItem, *, run_id: str | None) -> int:
        """The intent of a billed call that has no idempotency key, stored before it is sent."""
        job = JobIn(
            recording_id=item.recording_id,
            provider=Provider(item.provider),
            model=item.requested_model,
            external_id=f"sending:{uuid.uuid4()}",
            status=JobStatus.UPLOADING,
            channel=item.channel,
            flow_run_id=run_id,
        )
        with self.store.session_scope() as s:
            return repo.upsert_provider_job(s, job)

    def mark_unknown(self, job_id: int, message: str) -> None:
        """The call may have been done: it is not sent again unless an operator says so
        (replayed on connection loss; the same update twice is the same state)."""
        self.store.transaction(
            lambda s: s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(
                    status=JobStatus.UNKNOWN,
                    error_code="outcome_unknown",
                    error_message=message[:2000],
                    updated_at=utcnow(),
                )
            )
        )

    def store_discrete(self, job_id: int, external_id: str, segment: EmotionSegment, run_id: str) -> None:
        """A discrete answer is the result itself: its intent (`record_sending`) becomes the
        completed job with its one segment, in one transaction."""

        def work(s: Session) -> None:
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(external_id=external_id, error_code=None, error_message=None)
            )
            repo.update_job(s, job_id, status=JobStatus.COMPLETED)
            repo.save_emotion_segments(s, job_id, [segment], flow_run_id=run_id)

        # Replayed on connection loss: the answer is paid for, and a lost write would leave its
        # outcome unknown.
        self.store.transaction(work)

    def claim_due_jobs(self, worker: str, lease_s: float, limit: int) -> list[DueJob]:
        """Jobs whose result is due to be asked for, claimed for `lease_s` (a harvest)."""
        now = utcnow()
        until = now + dt.timedelta(seconds=lease_s)
        with self.store.session_scope() as s:
            rows = s.execute(
                sa.select(ProviderJob, Recording.duration_s)
                .join(Recording, Recording.id == ProviderJob.recording_id)
                .where(
                    ProviderJob.status.in_(WAITING_JOBS),
                    ProviderJob.next_poll_at <= now,
                    _lease_free(ProviderJob, worker, now),
                )
                .order_by(ProviderJob.next_poll_at)
                .limit(limit)
            ).all()
            claimed: list[DueJob] = []
            for job, duration in rows:
                got = s.execute(
                    sa.update(ProviderJob)
                    .where(ProviderJob.id == job.id, _lease_free(ProviderJob, worker, now))
                    .values(claimed_by=worker, lease_until=until)
                ).rowcount  # type: ignore[attr-defined]
                if got:
                    claimed.append(
                        DueJob(
                            id=job.id,
                            recording_id=job.recording_id,
                            provider=job.provider.value,
                            external_id=job.external_id,
                            channel=job.channel,
                            polls=job.polls,
                            submitted_at=job.submitted_at.timestamp(),
                            duration_s=duration or 0.0,
                            resubmitted=job.attempts > 1,
                        )
                    )
            return claimed

    def next_due(self) -> float | None:
        """When the earliest waiting job is due (Unix time), for the harvester's sleep."""
        with self.store.session_scope() as s:
            due = s.execute(
                sa.select(sa.func.min(ProviderJob.next_poll_at)).where(ProviderJob.status.in_(WAITING_JOBS))
            ).scalar_one_or_none()
            return None if due is None else due.timestamp()

    def poll_again(self, job_id: int, next_poll_at: float, *, processing: bool) -> None:
        with self.store.session_scope() as s:
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(
                    polls=ProviderJob.polls + 1,
                    next_poll_at=_at(next_poll_at),
                    claimed_by=None,
                    lease_until=None,
                    **({"status": JobStatus.PROCESSING} if processing else {}),
                )
            )

    def complete_job(
        self,
        job_id: int,
        run_id: str,
        *,
        segments: Sequence[EmotionSegment] | None = None,
        prosody: ProsodyResult | None = None,
    ) -> None:
        """The provider finished: its results and the job's completion in one transaction."""

        def work(s: Session) -> None:
            if segments is not None:
                repo.save_emotion_segments(s, job_id, segments, flow_run_id=run_id)
            if prosody is not None:
                repo.save_prosody_result(s, job_id, prosody, flow_run_id=run_id)
            repo.update_job(s, job_id, status=JobStatus.COMPLETED)
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(polls=ProviderJob.polls + 1, claimed_by=None, lease_until=None, next_poll_at=None)
            )

        self.store.transaction(work)  # replayed on connection loss: idempotent upserts

    def fail_job(self, job_id: int, code: str, message: str) -> None:
        with self.store.session_scope() as s:
            repo.update_job(s, job_id, status=JobStatus.FAILED, error_code=code, error_message=message)
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(claimed_by=None, lease_until=None, next_poll_at=None)
            )

    def release_job(self, job_id: int) -> None:
        with self.store.session_scope() as s:
            s.execute(
                sa.update(ProviderJob)
                .where(ProviderJob.id == job_id)
                .values(claimed_by=None, lease_until=None)
            )

    def load_recording(self, recording_id: int) -> RecordingState:
        with self.store.session_scope() as s:
            rec = s.get(Recording, recording_id)
            assert rec is not None
            return _state(rec)

    def finalize(self, recording_id: int, items: Sequence[WorkItem]) -> str | None:
        """Once every planned call is final: `stored` (all results in the database) or `failed`
        with each failed call's reason; once every call is at the provider: `submitted`.
        Returns the new status, or None if nothing changed.
        Safe to call from anywhere, any number of times (the last job's harvester, a sweep)."""
        with self.store.session_scope() as s:
            rec = s.get(Recording, recording_id)
            assert rec is not None
            if rec.status not in (*IN_FLIGHT, RecordingStatus.ACCEPTED):
                return None
            jobs = s.scalars(
                sa.select(ProviderJob)
                .where(ProviderJob.recording_id == recording_id)
                .order_by(ProviderJob.submitted_at, ProviderJob.id)
            ).all()
            newest: dict[tuple[str, int | None], ProviderJob] = {}
            for job in jobs:
                newest[(job.provider.value, job.channel)] = job
            failures: list[str] = []
            if any(newest.get(i.slot) is None or newest[i.slot].status not in JOB_FINAL for i in items):
                # Every call at the provider: from here on the recording waits on the harvest.
                sent = all(
                    newest.get(i.slot) is not None and newest[i.slot].status != JobStatus.UPLOADING
                    for i in items
                )
                if sent and rec.status != RecordingStatus.SUBMITTED:
                    repo.set_recording_status(s, recording_id, RecordingStatus.SUBMITTED)
                    return RecordingStatus.SUBMITTED.value
                return None
            for item in items:
                last = newest[item.slot]
                if last.status != JobStatus.COMPLETED:
                    label = item.provider + (f"/ch{item.channel}" if item.channel is not None else "")
                    failures.append(f"{label}: {last.error_code}: {last.error_message}")
            if failures:
                repo.set_recording_status(s, recording_id, RecordingStatus.FAILED, reason="; ".join(failures))
                return RecordingStatus.FAILED.value
            repo.set_recording_status(s, recording_id, RecordingStatus.STORED)
            return RecordingStatus.STORED.value

    # --- the analytics dataset -----------------------------------------------------------
    def export_stored(
        self,
        run_id: str,
        output_uri: str,
        recording_ids: Sequence[int] | None = None,
        extra: ExtraRows | None = None,
    ) -> list[str]:
        """Stored recordings go to the dataset in one commit, then become `completed`: those of
        `recording_ids` (a batch's), or every stored one (a run's end: a crash's leftovers
        too). Failed ones (of `recording_ids`, or of the run) are written too: their recording rows
        say why."""
        with self.store.session_scope() as s:
            if recording_ids is None:
                ids = list(
                    s.scalars(
                        sa.select(Recording.id).where(
                            sa.or_(
                                Recording.status == RecordingStatus.STORED,
                                sa.and_(
                                    Recording.status == RecordingStatus.FAILED, Recording.run_id == run_id
                                ),
                            )
                        )
                    )
                )
            else:
                ids = []
                for chunk in _in_chunks(list(recording_ids), 500):
                    ids += s.scalars(
                        sa.select(Recording.id).where(
                            Recording.id.in_(chunk),
                            Recording.status.in_((RecordingStatus.STORED, RecordingStatus.FAILED)),
                        )
                    )
        files: list[str] = []
        # A few hundred recordings a commit: memory stays flat however large the night.
        for chunk in _chunks(ids, EXPORT_CHUNK):
            files += self.export_run(run_id, chunk, output_uri, extra)
            with self.store.session_scope() as s:
                s.execute(
                    sa.update(Recording)
                    .where(Recording.id.in_(chunk), Recording.status == RecordingStatus.STORED)
                    .values(status=RecordingStatus.COMPLETED, processed_at=utcnow(), updated_at=utcnow())
                )
        return files

    def export_run(
        self, run_id: str, recording_ids: list[int], output_uri: str, extra: ExtraRows | None = None
    ) -> list[str]:
        """Merge this run's recordings into the dataset's Delta tables (one commit per table),
        and the files holding them into lineage; returns the files holding this run's rows."""
        from results_store.dataset import DatasetWriter

        if not recording_ids:
            return []
        with self.store.session_scope() as s:
            rows = repo.dataset_rows(s, recording_ids)
            more = extra(s, recording_ids) if extra is not None else []
        writer = DatasetWriter(output_uri, run_id)
        writer.add(rows)
        for table, records in more:
            writer.add_rows(table, records)
        result = writer.commit()
        with self.store.session_scope() as s:
            repo.record_dataset_commit(s, result)
        return list(result.file_uris)

    def compact_dataset(self, run_id: str, output_uri: str) -> int:
        """Merge each partition's small files (every upload-event run adds some) and move their
        lineage to the merged files, then vacuum files older than the retention; returns how
        many files were merged away."""
        from results_store import dataset
        from valence_pipeline.settings import get_settings

        commits = dataset.compact(output_uri)
        with self.store.session_scope() as s:
            repo.record_dataset_commit(s, commits)
        dataset.vacuum(output_uri, retention_days=get_settings().dataset_retention_days)
        log.info("dataset compaction for run %s: %d commit(s)", run_id, len(commits))
        return sum(len(c.removed) for c in commits)

    # --- what a run did ------------------------------------------------------------------
    def iter_run_files(self, run_id: str, chunk: int = 500) -> Iterator[dict[str, Any]]:
        """One row per recording the run (and its batches) took on: status, reason, jobs.

        Read `chunk` recordings at a time as plain columns (no ORM objects, no session kept
        between chunks), so the report of a night of any size holds one chunk at once."""
        after = 0
        while True:
            with self.store.session_scope() as s:
                recs = s.execute(
                    sa.select(
                        Recording.id, Recording.bucket, Recording.key, Recording.version_id,
                        Recording.etag, Recording.status, Recording.reason, Recording.duration_s,
                    )
                    .where(Recording.run_id == run_id, Recording.id > after)
                    .order_by(Recording.id)
                    .limit(chunk)
                ).all()  # fmt: skip
                if not recs:
                    return
                jobs: dict[int, dict[str, JobStatus]] = {}
                for recording_id, provider, channel, status in s.execute(
                    sa.select(
                        ProviderJob.recording_id,
                        ProviderJob.provider,
                        ProviderJob.channel,
                        ProviderJob.status,
                    )
                    .where(ProviderJob.recording_id.in_(_padded([r.id for r in recs], chunk)))
                    .order_by(ProviderJob.submitted_at, ProviderJob.id)
                ):  # the newest job per provider and channel wins
                    label = provider.value + (f"/ch{channel}" if channel is not None else "")
                    jobs.setdefault(recording_id, {})[label] = status
            for rec in recs:
                newest = jobs.get(rec.id, {})
                yield {
                    "recording_id": rec.id,
                    "file": s3_uri(rec.bucket, rec.key),
                    "version": rec.version_id or rec.etag,
                    "status": rec.status.value,
                    "reason": rec.reason or "",
                    "duration_s": rec.duration_s or 0.0,
                    "jobs": {label: status.value for label, status in newest.items()},
                    "failed_providers": sorted(
                        {
                            label.split("/")[0]
                            for label, status in newest.items()
                            if status != JobStatus.COMPLETED
                        }
                    )
                    if rec.status == RecordingStatus.FAILED
                    else [],
                }
            after = recs[-1].id

    def emotion_counts(self, run_id: str, min_confidence: float) -> Counter[str]:
        from results_store.models import EmotionSegmentRow

        with self.store.session_scope() as s:
            rows = s.execute(
                sa.select(EmotionSegmentRow.emotion, sa.func.count())
                .join(ProviderJob, ProviderJob.id == EmotionSegmentRow.job_id)
                .join(Recording, Recording.id == ProviderJob.recording_id)
                .where(Recording.run_id == run_id, EmotionSegmentRow.confidence >= min_confidence)
                .group_by(EmotionSegmentRow.emotion)
            ).all()
            return Counter({emotion: int(n) for emotion, n in rows})


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _in_chunks(items: list[T], size: int) -> Iterable[list[T]]:
    """`items` in chunks of at most `size` for `IN (...)` lists, each padded (its last item
    repeated) to a power of two or to `size`: a handful of distinct statements instead of one
    per list length. SQLite's driver keeps up to 128 prepared statements per pooled
    connection, and one per length of a list of up to 500 ids made the cache, and a worker's
    memory, grow with the size of the night."""
    for chunk in _chunks(items, size):
        yield _padded(chunk, size)


def _padded(chunk: list[T], size: int) -> list[T]:
    if not chunk:
        return chunk
    target = min(size, 1 << (len(chunk) - 1).bit_length())
    return chunk + [chunk[-1]] * (target - len(chunk))
