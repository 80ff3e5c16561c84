"""Run bookkeeping: the small store-facing steps around the main ones."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.hooks import close_stale_runs
from valence_client.redaction import failures_redacted
from valence_pipeline import __version__
from valence_pipeline.runtime import runtime
from valence_pipeline.s3 import ObjectVersion

log = logging.getLogger(__name__)


@task(
    name="open-run", task_run_name="open run {name}", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE
)
@failures_redacted
def open_run(
    run_id: str,
    name: str,
    trigger: str,
    deployment: str | None,
    parent_run_id: str | None = None,
    audio_budget_s: float | None = None,
) -> None:
    rt = runtime()
    log.info("run %s (%s) starting", name, run_id)
    if parent_run_id is None:
        close_stale_runs(run_id)  # rows of runs whose process was killed outright
    rt.store.start_run(
        run_id,
        trigger=trigger,
        deployment=deployment,
        code_version=__version__,
        settings_hash=rt.settings.fingerprint(),
        parent_run_id=parent_run_id,
        audio_budget_s=audio_budget_s,
    )


@task(name="close-run", task_run_name="close run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
@failures_redacted
def close_run(run_id: str, counts: dict[str, int], failed: bool = False) -> None:
    runtime().store.finish_run(run_id, counts=counts, failed=failed)


@task(name="failed-recordings", cache_policy=NO_CACHE)
@failures_redacted
def failed_versions(max_files: int | None) -> list[ObjectVersion]:
    """Object versions whose recording ended `failed`, oldest first."""
    return runtime().store.failed_object_versions(limit=max_files)
