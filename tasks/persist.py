"""The analytics dataset: stored results go in one commit per run; nightly compaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)


@task(
    name="export-dataset",
    task_run_name="export dataset {run_id}",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def export_dataset(run_id: str, recording_ids: list[int] | None) -> list[str]:
    """One dataset commit for what the run stored (not a file per recording), read from the
    database so the dataset and the database agree row for row; the recordings become
    `completed`. `recording_ids` None: every stored recording, a crash's leftovers included."""
    rt = runtime()
    return rt.store.export_stored(run_id, rt.settings.output_uri, recording_ids, extra=_call_analytics)


def _call_analytics(session: Any, recording_ids: Sequence[int]) -> list[tuple[Any, list[Any]]]:
    """The per-call analytics table goes into the same dataset commit as the results."""
    import analytics
    from results_store.models import CALL_ANALYTICS_TABLE

    return [(CALL_ANALYTICS_TABLE, analytics.dataset_records(session, recording_ids))]


@task(
    name="compact-dataset",
    task_run_name="compact dataset",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
def compact_dataset(run_id: str) -> int:
    """Nightly housekeeping: small files merged per partition, crash leftovers removed.
    A concurrent run's commit wins and this one retries on the new snapshot."""
    rt = runtime()
    merged = rt.store.compact_dataset(run_id, rt.settings.output_uri)
    log.info("compaction merged %d small files", merged)
    return merged
