"""Step 6: store results and lineage, then give each recording its final status."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_pipeline.runtime import runtime
from valence_pipeline.work import JobHandle

log = logging.getLogger(__name__)


@dataclass
class RecordingOutcome:
    """One row of the run's per-file table."""

    uri: str
    version: str
    status: str
    reason: str | None = None
    duration_s: float = 0.0
    jobs: dict[str, str] = field(default_factory=dict)
    emotions: Counter[str] = field(default_factory=Counter)


@task(
    name="persist",
    task_run_name="persist {uri}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    cache_policy=NO_CACHE,
)
def persist_recording(recording_id: int, uri: str, handles: list[JobHandle], run_id: str) -> RecordingOutcome:
    """Write each finished job's rows (idempotent upserts) and the recording's final status."""
    rt = runtime()
    store = rt.store
    min_conf = rt.settings.min_confidence
    outcome = RecordingOutcome(uri=uri, version=handles[0].item.obj.version_token, status="completed")
    outcome.duration_s = handles[0].item.info.duration_s
    failures: list[str] = []
    for h in handles:
        label = h.item.provider + (f"/ch{h.item.channel}" if h.item.channel is not None else "")
        if h.state in ("completed", "skipped"):
            if h.segments:
                store.save_emotion_segments(h.job_id, h.segments, run_id)
                outcome.emotions.update(s.emotion for s in h.segments if s.confidence >= min_conf)
            if h.prosody is not None:
                store.save_prosody(h.job_id, h.prosody, run_id)
            store.update_job(h.job_id, status="completed")
            outcome.jobs[label] = f"completed {h.external_id or ''}".strip()
        else:
            store.update_job(
                h.job_id, status="failed", error_code=h.error_code, error_message=h.error_message
            )
            failures.append(f"{label}: {h.error_code}: {h.error_message}")
            outcome.jobs[label] = f"failed ({h.error_code})"
    if failures:
        outcome.status, outcome.reason = "failed", "; ".join(failures)
    store.finish_recording(recording_id, status=outcome.status, reason=outcome.reason)
    for h in handles:
        h.release()  # all stored: a retry of this task never runs after this point
    return outcome


@task(
    name="export-parquet",
    task_run_name="export parquet {run_id}",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def export_parquet(run_id: str, recording_ids: list[int]) -> list[str]:
    """One Parquet commit per run (not a file per recording), from what the database holds,
    so the dataset and the database agree row for row."""
    rt = runtime()
    return rt.store.export_run(run_id, recording_ids, rt.settings.output_uri)


@task(
    name="compact-parquet",
    task_run_name="compact parquet",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def compact_parquet(run_id: str) -> int:
    """Nightly housekeeping: small files merged per partition, crash leftovers removed.
    A concurrent run's commit wins and this one retries on the new snapshot."""
    rt = runtime()
    merged = rt.store.compact_dataset(run_id, rt.settings.output_uri)
    log.info("compaction merged %d small Parquet files", merged)
    return merged
