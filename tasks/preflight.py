"""The preflight task: check one object version and record the verdict."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_pipeline.preflight import Preflight, run_preflight
from valence_pipeline.runtime import runtime
from valence_pipeline.s3 import ObjectVersion


@task(
    name="preflight",
    task_run_name="preflight {obj.uri}",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def preflight(obj: ObjectVersion, run_id: str) -> tuple[Preflight, int]:
    """Check `obj` and record it (discovered or rejected with its reason); returns the row id."""
    rt = runtime()
    verdict = run_preflight(rt.s3, obj, rt.settings)
    recording_id = rt.store.record_preflight(verdict)
    return verdict, recording_id
