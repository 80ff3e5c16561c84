"""The analytics dataset: stored results go in one commit per run; nightly compaction."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_client.redaction import redact
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
    args = ["export", "--run-id", run_id]
    if recording_ids is not None:
        args += ["--recordings", ",".join(map(str, recording_ids))]
    return list(in_child(args))


def export_now(run_id: str, recording_ids: list[int] | None) -> list[str]:
    """What `export_dataset` runs, in the process that calls it."""
    rt = runtime()
    return rt.store.export_stored(run_id, rt.settings.output_uri, recording_ids, extra=_call_analytics)


def compact_now(run_id: str) -> int:
    rt = runtime()
    return rt.store.compact_dataset(run_id, rt.settings.output_uri)


def in_child(args: list[str]) -> Any:
    """A dataset command in a short-lived child process (`valence-pipeline dataset ...`).

    delta-rs brings about 150 MiB of library code and buffers the moment it is used; kept out
    of the flow process, that process stays bounded by the recordings in flight, and the child
    hands every page back when it exits. Same environment, so the same settings.
    """
    done = subprocess.run(
        [sys.executable, "-m", "commands.main", "dataset", *args],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=6 * 3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dataset {args[0]} failed: {redact(done.stderr[-3000:])}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    merged = int(in_child(["compact", "--run-id", run_id]))
    log.info("compaction merged %d small files", merged)
    return merged
