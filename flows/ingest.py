"""The product's flows: find recordings, take them through both providers, store, report.

`nightly_ingest` is the scheduled job, `process_recordings` what an upload event runs,
`retry_failed` and `backfill` are for operators; `process_batch` is one batch of a night on
the work pool. Every flow reads like the process: open the run, register what it will work
on, process (pipelined, in the database's states), export the dataset, report, close. A run
in which files failed ends Failed with the count in its message; it never stops the others.
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Any

from prefect import flow
from prefect.runtime import deployment, flow_run
from prefect.states import Failed, State
from prefect.utilities.hashing import file_hash

from flows.names import day_name, try_naming_scheduled_runs, upload_name
from tasks.dataset_child import DATASET_CHILD
from tasks.discover import Registered, discover, register, resolve
from tasks.hooks import mark_run_crashed, mark_run_failed
from tasks.persist import compact_dataset, export_dataset
from tasks.process import process, sweep
from tasks.report import build_summary, draw_pictures, publish_report
from tasks.run_logs import send_pipeline_logs_to_prefect
from tasks.runs import close_run, failed_versions, open_run
from valence_client.redaction import failures_redacted
from valence_pipeline.runtime import runtime, share_malloc_arenas

log = logging.getLogger(__name__)

# The flow process's first act, before Prefect or the engine start threads: few malloc heaps,
# so a long night's churn is not kept in one per thread (valence_pipeline/runtime.py).
share_malloc_arenas()

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
FLOW_OPTIONS: dict[str, Any] = {
    # Every flow marks its `pipeline_runs` row when it ends badly (tasks/hooks.py).
    "on_failure": [mark_run_failed],
    "on_crashed": [mark_run_crashed],
    "on_cancellation": [mark_run_crashed],
    # Prefect's default version, the hash of the flow function's file: of this file, since the
    # functions below are wrapped (failures_redacted) and the wrapper's file is another.
    "version": file_hash(__file__),
}


class FilesFailed(Exception):
    """Some files of the run failed: the run's final state carries this, with its counts."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message, result)
        self.result = result

    def __str__(self) -> str:
        return str(self.args[0])


def _failed(message: str, result: dict[str, Any]) -> State:
    # A Failed state's data must be an exception (Prefect raises it to whoever asks).
    return Failed(message=message, data=FilesFailed(message, result))


def _today_name(prefix: str) -> str:
    """`nightly-2026-11-30` for the day this run was scheduled for (see flows/names.py)."""
    return day_name(prefix, flow_run.get_scheduled_start_time())


def _run_id() -> str:
    """The run's id in the database: its flow run's."""
    return str(flow_run.get_id())


def process_objects(
    taken: Registered,
    run_name: str,
    trigger: str,
    max_audio_hours: float | None,
    *,
    resend_unknown: bool = False,
    pictures: bool = False,
) -> dict[str, Any] | State:
    """Process the registered recordings to a final state, export, report (with the day's
    pictures when `pictures`)."""
    send_pipeline_logs_to_prefect()
    DATASET_CHILD.start()  # its imports happen while the providers work (tasks/dataset_child.py)
    run_id = _run_id()
    budget = None if max_audio_hours is None else max_audio_hours * 3600.0
    open_run(run_id, run_name, trigger, deployment.get_name(), audio_budget_s=budget)
    try:
        _work(taken.ids, run_id, resend_unknown, run_name)
        files = export_dataset(run_id, None)  # every stored recording: a crash's leftovers too
        drawn = draw_pictures(datetime.now(UTC).date()) if pictures else ""  # the processing day (UTC)
    except BaseException:
        close_run(run_id, {"seen": len(taken.ids)}, failed=True)
        raise
    finally:
        DATASET_CHILD.close()
    rt = runtime()
    api = _add(rt.api_stats(), rt.store.child_counts(run_id))
    summary = build_summary(run_id, run_name, api, files)
    summary.arrived_without_event = taken.without_event
    text = publish_report(summary, drawn)
    close_run(run_id, summary.counts(), failed=summary.failed > 0)
    result = {"run_id": run_id, "summary": text, **summary.counts()}
    if summary.failed:
        log.error("%s: %s", run_name, summary.state_message())
        return _failed(summary.state_message(), result)
    return result


def _work(ids: list[int], run_id: str, resend_unknown: bool, run_name: str) -> None:
    """In this process, or as batches on the work pool with this run sweeping behind them."""
    if not ids:
        return
    settings = runtime().settings
    if not settings.batch_deployment:
        process(ids, len(ids), run_id, run_id, resend_unknown)
        return
    from prefect.deployments import run_deployment

    size = settings.batch_size
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    runs: list[Any] = [
        run_deployment(
            settings.batch_deployment,
            parameters={"recording_ids": batch, "parent_run_id": run_id, "resend_unknown": resend_unknown},
            # Named from the moment it is scheduled, not only once a worker starts it.
            flow_run_name=f"{run_name} batch {i + 1} of {len(batches)}",
            timeout=0,
        )
        for i, batch in enumerate(batches)
    ]
    log.info("handed %d recordings to the work pool in %d batches", len(ids), len(batches))
    sweep(ids, len(ids), run_id, _all_final([r.id for r in runs]))


def _all_final(run_ids: list[Any]) -> Callable[[], bool]:
    """Whether every batch run has ended (asked at most every 5 s)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    seen: dict[str, Any] = {"at": 0.0, "done": False}

    def done() -> bool:
        if seen["done"] or _time.monotonic() - seen["at"] < 5.0:
            return bool(seen["done"])
        seen["at"] = _time.monotonic()
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        seen["done"] = all(r.state is not None and r.state.type.value in FINAL_STATES for r in runs)
        return bool(seen["done"])

    return done


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def _upload_name() -> str:
    return upload_name(list(flow_run.parameters.get("uris") or []))


def _sources(source: str | list[str]) -> list[str]:
    return [source] if isinstance(source, str) else list(source)


@flow(name="nightly-ingest", flow_run_name=lambda: _today_name("nightly"), **FLOW_OPTIONS)
@failures_redacted
def nightly_ingest(
    source: str | list[str],
    since: datetime | None = None,
    max_files: int | None = None,
    max_audio_hours: float | None = None,
    trigger: str = "schedule",
) -> dict[str, Any] | State:
    """The scheduled job: every new or changed recording under `source` (one or more s3:// prefixes)."""
    # Once a night, not per upload event: the day's event runs each added small files. It
    # needs nothing of tonight's, so it runs beside the processing, in the dataset child.
    compaction = compact_dataset.submit(str(flow_run.get_id() or "nightly"))
    try:
        taken = discover(
            _sources(source), _run_id(), since=since, max_files=max_files, count_unannounced=True
        )
        result = process_objects(
            taken,
            _today_name("nightly"),
            trigger,
            max_audio_hours,
            pictures=True,  # once a night: the day's calls, upload-event runs' included
        )
        compacted = compaction.result()
    finally:
        compaction.wait()  # never leave it running past the flow (the child ends with it)
        DATASET_CHILD.close()
    # The server's scheduler planned another night when this one started: named from now on.
    try_naming_scheduled_runs()
    if isinstance(result, State):
        result.data.result["dataset_files_compacted"] = compacted  # type: ignore[union-attr]
        return result
    result["dataset_files_compacted"] = compacted
    return result


@flow(name="process-recordings", flow_run_name=_upload_name, **FLOW_OPTIONS)
@failures_redacted
def process_recordings(uris: list[str], trigger: str = "event") -> dict[str, Any] | State:
    """The given objects (an upload event names one; `s3://b/k?versionId=V` pins a version)."""
    objects = resolve(uris)
    return process_objects(register(objects, len(objects), _run_id()), _upload_name(), trigger, None)


@flow(name="process-batch", **FLOW_OPTIONS)  # named by the night when it schedules the run (see `_work`)
@failures_redacted
def process_batch(
    recording_ids: list[int], parent_run_id: str, resend_unknown: bool = False
) -> dict[str, Any] | State:
    """One batch of a night, on whichever worker of the pool picked it up."""
    send_pipeline_logs_to_prefect()
    batch_id = str(flow_run.get_id())
    open_run(
        batch_id, str(flow_run.get_name()), "schedule", deployment.get_name(), parent_run_id=parent_run_id
    )
    DATASET_CHILD.start()
    try:
        process(recording_ids, len(recording_ids), parent_run_id, batch_id, resend_unknown)
        export_dataset(batch_id, recording_ids)
    except BaseException:
        close_run(batch_id, {}, failed=True)
        raise
    finally:
        DATASET_CHILD.close()
    rt = runtime()
    statuses = rt.store.statuses(recording_ids)
    failed = sum(1 for s in statuses.values() if s == "failed")
    counts = {"seen": len(recording_ids), "failed": failed, **rt.api_stats()}
    close_run(batch_id, counts, failed=failed > 0)
    if failed:
        return _failed(f"{failed} of {len(recording_ids)} files failed", counts)
    return counts


@flow(name="retry-failed", flow_run_name=lambda: _today_name("retry-failed"), **FLOW_OPTIONS)
@failures_redacted
def retry_failed(max_files: int | None = None) -> dict[str, Any] | State:
    """Recordings that ended failed get another go; jobs that completed are not paid again, and
    a submit whose answer was lost is sent again (that is what an operator's retry is for)."""
    objects = failed_versions(max_files)
    taken = register(objects, len(objects), _run_id())
    return process_objects(taken, _today_name("retry-failed"), "manual", None, resend_unknown=True)


@flow(name="backfill", flow_run_name=lambda: _today_name("backfill"), **FLOW_OPTIONS)
@failures_redacted
def backfill(
    source: str | list[str], start: date, end: date, max_files: int | None = None
) -> dict[str, Any] | State:
    """Objects last modified in [start, end) that are not finished (an older backlog)."""
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end, time.min, tzinfo=UTC)
    taken = discover(_sources(source), _run_id(), since=since, until=until, max_files=max_files)
    return process_objects(taken, f"backfill-{start}-{end}", "backfill", None)


def run_to_result(flow_fn: Any, **parameters: Any) -> dict[str, Any]:
    """Run a flow and return its result whether it completed or ended Failed because files
    failed (the CLI, the demo and tests read the counts either way); a crash still raises."""
    state = flow_fn(**parameters, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, FilesFailed):
        return dict(result.result)
    if isinstance(result, BaseException):
        raise result
    return dict(result)
