"""Run bookkeeping and content reuse: the small store-facing steps around the main ones."""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.persist import RecordingOutcome
from valence_pipeline import __version__
from valence_pipeline.preflight import Preflight
from valence_pipeline.runtime import runtime
from valence_pipeline.s3 import ObjectVersion

log = logging.getLogger(__name__)


@task(
    name="open-run", task_run_name="open run {name}", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE
)
def open_run(run_id: str, name: str, trigger: str, deployment: str | None) -> None:
    rt = runtime()
    log.info("run %s (%s) starting", name, run_id)
    rt.store.start_run(
        run_id,
        trigger=trigger,
        deployment=deployment,
        code_version=__version__,
        settings_hash=rt.settings.fingerprint(),
    )


@task(name="close-run", task_run_name="close run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def close_run(run_id: str, counts: dict[str, Any]) -> None:
    runtime().store.finish_run(run_id, counts=counts)


@task(name="failed-recordings", cache_policy=NO_CACHE)
def failed_versions(max_files: int | None) -> list[ObjectVersion]:
    """Object versions whose recording ended `failed`, oldest first."""
    return runtime().store.failed_object_versions(limit=max_files)


@task(
    name="reuse",
    task_run_name="reuse? {verdict.obj.uri}",
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def reuse_known_content(verdict: Preflight, recording_id: int, run_id: str) -> RecordingOutcome | None:
    """Same bytes already analysed under another key or version: link, don't pay again."""
    assert verdict.sha256 is not None and verdict.info is not None
    source = runtime().store.reuse_results(recording_id, verdict.sha256, run_id)
    if source is None:
        return None
    log.info("%s has the same content as %s: reusing its results", verdict.obj.uri, source)
    return RecordingOutcome(
        uri=verdict.obj.uri,
        version=verdict.obj.version_token,
        status="completed",
        reason=f"reused results of {source}",
        duration_s=verdict.info.duration_s,
        jobs={"reused": source},
    )
