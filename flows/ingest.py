"""The product's flows: find recordings, check them, analyse them with both providers, store.

`nightly_ingest` is the scheduled job, `process_recordings` what an upload event runs,
`retry_failed` and `backfill` are for operators. All four share `process_objects`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime, time
from typing import Any

from prefect import flow, tags, unmapped
from prefect.runtime import deployment, flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.discover import discover, resolve
from tasks.persist import RecordingOutcome, compact_parquet, export_parquet, persist_recording
from tasks.preflight import preflight
from tasks.report import Progress, RunSummary, publish_report
from tasks.runs import close_run, failed_versions, open_run, reuse_known_content
from tasks.submit import plan_work, submit
from tasks.wait import await_results
from valence_pipeline.runtime import runtime
from valence_pipeline.s3 import ObjectVersion
from valence_pipeline.work import JobHandle

log = logging.getLogger(__name__)

# Files in flight per run; the provider limiters, not this, bound the API call rate.
TASK_RUNNER: Any = ThreadPoolTaskRunner(max_workers=4)


def _today_name(prefix: str) -> str:
    return f"{prefix}-{date.today().isoformat()}"


def process_objects(
    objects: list[ObjectVersion], run_name: str, trigger: str, max_audio_hours: float | None
) -> dict[str, Any]:
    """Preflight -> (reuse | submit) -> wait -> persist -> Parquet -> report, for `objects`."""
    rt = runtime()
    run_id = flow_run.get_id() or run_name
    open_run(run_id, run_name, trigger, deployment.get_name())
    summary = RunSummary(run_name=run_name, seen=len(objects))
    progress = Progress(len(objects) * 2, f"{run_name}: files checked and finished")

    checked = preflight.map(objects, run_id=unmapped(run_id)).result()
    progress.advance(len(checked))
    rejected_rows = [
        {
            "file": v.obj.uri,
            "version": v.obj.version_token,
            "status": "rejected",
            "jobs": "",
            "reason": v.reason,
        }
        for v, _ in checked
        if not v.accepted
    ]
    summary.rejected.update(v.reject_code or "unknown" for v, _ in checked if not v.accepted)
    accepted = [(v, rid) for v, rid in checked if v.accepted]
    accepted, summary.deferred = _within_budget(accepted, max_audio_hours)

    reused = reuse_known_content.map(
        [v for v, _ in accepted], [rid for _, rid in accepted], run_id=unmapped(run_id)
    ).result()
    to_do = [(v, rid) for (v, rid), outcome in zip(accepted, reused, strict=True) if outcome is None]
    summary.outcomes.extend(o for o in reused if o is not None)

    items = [item for v, rid in to_do for item in plan_work(v, rid, rt.settings)]
    handles = _submit_all(items)
    positions = [i for i, h in enumerate(handles) if h.state == "submitted"]
    if positions:
        # One task waits for all of them (same order back), instead of a sleeping worker each.
        waited = await_results([handles[i] for i in positions], len(positions))
        for i, final in zip(positions, waited, strict=True):
            handles[i] = final

    by_recording: dict[int, list[JobHandle]] = defaultdict(list)
    for h in handles:
        by_recording[h.item.recording_id].append(h)
    ids = list(by_recording)
    uris = [by_recording[r][0].item.obj.uri for r in ids]
    outcomes: list[RecordingOutcome] = (
        list(
            persist_recording.map(ids, uris, [by_recording[r] for r in ids], run_id=unmapped(run_id)).result()
        )
        if ids
        else []
    )
    progress.advance(len(checked))
    summary.outcomes.extend(outcomes)
    finished = ids + [rid for (_, rid), o in zip(accepted, reused, strict=True) if o is not None]
    summary.parquet_files = export_parquet(run_id, finished)
    summary.api = rt.api_stats()
    summary.notes = list(rt.flags.notes)
    text = publish_report(summary, rejected_rows)
    close_run(run_id, summary.counts())
    return {"run_id": run_id, "summary": text, **summary.counts()}


def _submit_all(items: list[Any]) -> list[JobHandle]:
    """Both providers' submissions at once, each task run tagged with its provider (so the UI
    can filter on `valence` / `valsea`); handles come back in the order of `items`."""
    pending = []
    for provider in ("valence", "valsea"):
        positions = [i for i, item in enumerate(items) if item.provider == provider]
        if positions:
            with tags(provider):
                pending.append((positions, submit.map([items[i] for i in positions])))
    handles: dict[int, JobHandle] = {}
    for positions, futures in pending:
        handles.update(zip(positions, futures.result(), strict=True))
    return [handles[i] for i in range(len(items))]


def _upload_name() -> str:
    """`upload s3://bucket/key` for an upload event's run (several objects: how many)."""
    uris = list(flow_run.parameters.get("uris") or [])
    return f"upload {uris[0]}" if len(uris) == 1 else f"upload {len(uris)} objects"


def _within_budget(accepted: list[Any], max_audio_hours: float | None) -> tuple[list[Any], int]:
    """Keep files in order until the night's audio budget is spent; the rest wait for next time."""
    if max_audio_hours is None:
        return accepted, 0
    kept, total = [], 0.0
    for verdict, rid in accepted:
        hours = verdict.info.duration_s / 3600.0
        if total + hours > max_audio_hours:
            continue
        kept.append((verdict, rid))
        total += hours
    return kept, len(accepted) - len(kept)


def _sources(source: str | list[str]) -> list[str]:
    return [source] if isinstance(source, str) else list(source)


@flow(name="nightly-ingest", flow_run_name=lambda: _today_name("nightly"), task_runner=TASK_RUNNER)
def nightly_ingest(
    source: str | list[str],
    since: datetime | None = None,
    max_files: int | None = None,
    max_audio_hours: float | None = None,
    trigger: str = "schedule",
) -> dict[str, Any]:
    """The scheduled job: every new or changed recording under `source` (one or more s3:// prefixes)."""
    objects = discover(_sources(source), since=since, max_files=max_files)
    result = process_objects(objects, _today_name("nightly"), trigger, max_audio_hours)
    # Once a night, not per upload event: the day's event runs each added small files.
    result["parquet_files_compacted"] = compact_parquet(result["run_id"])
    return result


@flow(name="process-recordings", flow_run_name=_upload_name, task_runner=TASK_RUNNER)
def process_recordings(uris: list[str], trigger: str = "event") -> dict[str, Any]:
    """The given objects (an upload event names one), at their current version."""
    return process_objects(resolve(uris), _upload_name(), trigger, None)


@flow(name="retry-failed", flow_run_name=lambda: _today_name("retry-failed"), task_runner=TASK_RUNNER)
def retry_failed(max_files: int | None = None) -> dict[str, Any]:
    """Recordings that ended failed get another go; jobs that completed are not paid again."""
    return process_objects(failed_versions(max_files), _today_name("retry-failed"), "manual", None)


@flow(name="backfill", flow_run_name=lambda: _today_name("backfill"), task_runner=TASK_RUNNER)
def backfill(source: str | list[str], start: date, end: date, max_files: int | None = None) -> dict[str, Any]:
    """Objects last modified in [start, end) that are not finished (an older backlog)."""
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end, time.min, tzinfo=UTC)
    objects = [o for o in discover(_sources(source), since=since) if o.last_modified < until]
    objects = objects[:max_files] if max_files is not None else objects
    return process_objects(objects, f"backfill-{start}-{end}", "backfill", None)
