"""The analytics dataset: stored results go in one commit per run; nightly compaction. Both
run in the run's dataset child (tasks/dataset_child.py)."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.dataset_child import DATASET_CHILD
from valence_client.redaction import failures_redacted

log = logging.getLogger(__name__)


@task(
    name="export-dataset",
    task_run_name="export dataset {run_id}",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
@failures_redacted
def export_dataset(run_id: str, recording_ids: list[int] | None) -> list[str]:
    """One dataset commit for what the run stored (not a file per recording), read from the
    database so the dataset and the database agree row for row; the recordings become
    `completed`. `recording_ids` None: every stored recording, a crash's leftovers included."""
    return list(DATASET_CHILD.call({"op": "export", "run_id": run_id, "recordings": recording_ids}))


@task(
    name="compact-dataset",
    task_run_name="compact dataset",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
)
@failures_redacted
def compact_dataset(run_id: str) -> int:
    """Nightly housekeeping: small files merged per partition, crash leftovers removed.
    A concurrent run's commit wins and this one retries on the new snapshot."""
    merged = int(DATASET_CHILD.call({"op": "compact", "run_id": run_id}))
    log.info("compaction merged %d small files", merged)
    return merged
