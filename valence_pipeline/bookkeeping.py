"""The pipeline's one door to the results store.

Tasks speak in pipeline values (a `Preflight` verdict, a `WorkItem`, provider models); this
translates them into the store's typed inputs, one short transaction per call, so a task that
crashes between two calls leaves every earlier fact committed and a re-run resumes from them.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from results_store import repository as repo
from results_store.db import Store, get_store
from results_store.models import JobStatus, Provider, Recording, RecordingStatus, RunStatus, RunTrigger
from results_store.parquet import DatasetWriter, compact
from results_store.records import JobIn, JobRef, RecordingIn, RunStart
from valence_client.models import EmotionSegment, ProsodyResult
from valence_pipeline.s3 import NULL_VERSION, ObjectVersion

if TYPE_CHECKING:
    from valence_pipeline.preflight import Preflight
    from valence_pipeline.work import WorkItem

log = logging.getLogger(__name__)


def _version_id(obj: ObjectVersion) -> str | None:
    return obj.version_id if obj.version_id and obj.version_id != NULL_VERSION else None


class PipelineStore:
    def __init__(self, url: str) -> None:
        self.store: Store = get_store(url)  # refuses a database whose schema is behind

    # --- recordings ----------------------------------------------------------------------
    def is_finished(self, obj: ObjectVersion) -> bool:
        with self.store.session_scope() as s:
            return repo.is_finished(s, obj.bucket, obj.key, version_id=_version_id(obj), etag=obj.etag)

    def record_preflight(self, verdict: Preflight) -> int:
        """Upsert the object version with what preflight learned; rejected ones get their reason."""
        obj, info = verdict.obj, verdict.info
        rec = RecordingIn(
            bucket=obj.bucket,
            key=obj.key,
            etag=obj.etag,
            size_bytes=obj.size,
            version_id=_version_id(obj),
            sha256=verdict.sha256,
            content_type=f"audio/{info.format.lower()}" if info else None,
            duration_s=info.duration_s if info else None,
            sample_rate=info.samplerate if info else None,
            channels=info.channels if info else None,
        )
        with self.store.session_scope() as s:
            ref = repo.upsert_recording(s, rec)
            if not verdict.accepted:
                repo.set_recording_status(s, ref.id, RecordingStatus.REJECTED, reason=verdict.reason)
            return ref.id

    def finish_recording(self, recording_id: int, status: str, reason: str | None) -> None:
        with self.store.session_scope() as s:
            repo.set_recording_status(s, recording_id, RecordingStatus(status), reason=reason)

    def reuse_results(self, recording_id: int, sha256: str, run_id: str) -> str | None:
        """Link to a completed recording with the same bytes; returns its URI, or None."""
        with self.store.session_scope() as s:
            source = repo.find_completed_by_sha256(s, sha256, exclude_recording_id=recording_id)
            if source is None:
                return None
            repo.record_reuse(s, recording_id=recording_id, source_recording_id=source.id, flow_run_id=run_id)
            return f"s3://{source.bucket}/{source.key}"

    def failed_object_versions(self, limit: int | None) -> list[ObjectVersion]:
        query = sa.select(Recording).where(Recording.status == RecordingStatus.FAILED).order_by(Recording.id)
        with self.store.session_scope() as s:
            rows = s.scalars(query.limit(limit) if limit else query).all()
            return [
                ObjectVersion(
                    bucket=r.bucket,
                    key=r.key,
                    version_id=r.version_id or NULL_VERSION,
                    etag=r.etag,
                    size=r.size_bytes,
                    last_modified=r.discovered_at,
                )
                for r in rows
            ]

    # --- provider jobs -------------------------------------------------------------------
    def latest_job(self, item: WorkItem) -> JobRef | None:
        with self.store.session_scope() as s:
            return repo.find_resumable_job(
                s,
                item.recording_id,
                Provider(item.provider),
                model=item.requested_model,
                channel=item.channel,
            )

    def record_job(self, item: WorkItem, *, external_id: str, status: str, **run_ids: str | None) -> int:
        """Store a job the moment its provider id is known; moves the recording along too."""
        job_status = JobStatus.COMPLETED if status == "completed" else JobStatus.SUBMITTED
        job = JobIn(
            recording_id=item.recording_id,
            provider=Provider(item.provider),
            model=item.requested_model,
            external_id=external_id,
            status=job_status,
            channel=item.channel,
            **run_ids,  # type: ignore[arg-type]
        )
        with self.store.session_scope() as s:
            job_id = repo.upsert_provider_job(s, job)
            stage = RecordingStatus.UPLOADING if status == "uploading" else RecordingStatus.SUBMITTED
            repo.set_recording_status(s, item.recording_id, stage)
            return job_id

    def record_failure(
        self, item: WorkItem, *, error_code: str, error_message: str, **run_ids: str | None
    ) -> int:
        """A call that failed before the provider gave it an id still gets a row (and a reason)."""
        external_id = f"unsubmitted:{uuid.uuid4()}"
        job = JobIn(
            recording_id=item.recording_id,
            provider=Provider(item.provider),
            model=item.requested_model,
            external_id=external_id,
            status=JobStatus.FAILED,
            channel=item.channel,
            error_code=error_code,
            error_message=error_message[:2000],
            **run_ids,  # type: ignore[arg-type]
        )
        with self.store.session_scope() as s:
            return repo.upsert_provider_job(s, job)

    def update_job(
        self, job_id: int, *, status: str, error_code: str | None = None, error_message: str | None = None
    ) -> None:
        with self.store.session_scope() as s:
            repo.update_job(
                s, job_id, status=JobStatus(status), error_code=error_code, error_message=error_message
            )

    # --- results -------------------------------------------------------------------------
    def save_emotion_segments(self, job_id: int, segments: list[EmotionSegment], run_id: str) -> None:
        with self.store.session_scope() as s:
            repo.save_emotion_segments(s, job_id, segments, flow_run_id=run_id)

    def save_prosody(self, job_id: int, result: ProsodyResult, run_id: str) -> None:
        with self.store.session_scope() as s:
            repo.save_prosody_result(s, job_id, result, flow_run_id=run_id)

    def export_run(self, run_id: str, recording_ids: list[int], output_uri: str) -> list[str]:
        """Write this run's recordings to Parquet in one commit, and the files into lineage."""
        if not recording_ids:
            return []
        with self.store.session_scope() as s:
            rows = repo.dataset_rows(s, recording_ids)
        writer = DatasetWriter(output_uri, run_id)
        writer.add(rows)
        result = writer.commit()
        with self.store.session_scope() as s:
            repo.record_parquet_commit(s, result)
        return list(result.file_uris)

    def compact_dataset(self, run_id: str, output_uri: str) -> int:
        """Merge each partition's small files (every upload-event run adds one) and move their
        lineage to the merged files; returns how many files were merged away."""
        result = compact(output_uri, run_id=run_id)
        with self.store.session_scope() as s:
            repo.record_parquet_commit(s, result)
        return len(result.removed)

    # --- runs ----------------------------------------------------------------------------
    def start_run(
        self, run_id: str, *, trigger: str, deployment: str | None, code_version: str, settings_hash: str
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

    def finish_run(self, run_id: str, counts: dict[str, Any], failed: bool = False) -> None:
        numeric = {
            k: int(v) for k, v in counts.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        with self.store.session_scope() as s:
            repo.finish_run(
                s, run_id, status=RunStatus.FAILED if failed else RunStatus.COMPLETED, counts=numeric
            )
