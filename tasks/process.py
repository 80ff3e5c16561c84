"""Processing recordings: the pipelined engine run as one Prefect task per batch.

The engine (valence_pipeline/engine.py) checks, sends and harvests with its own threads and
keeps every recording's progress in the database, so Prefect sees one task run per batch, not
five per file: a night of 10,000 recordings is a few hundred task runs, and no server round
trip sits between a recording and its next step.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from valence_client.redaction import failures_redacted
from valence_pipeline.engine import Engine, RunScope
from valence_pipeline.runtime import Runtime, runtime

log = logging.getLogger(__name__)


def worker_name(batch_run_id: str) -> str:
    """Who holds leases: this host and process, for this run (unique even if ids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{batch_run_id[:8]}:{uuid.uuid4().hex[:6]}"


def analyse(rt: Runtime) -> Callable[[int], None]:
    """What a call's emotions mean, computed the moment its results are stored."""
    import analytics

    def on_stored(recording_id: int) -> None:
        with rt.store.store.session_scope() as session:
            analytics.compute_and_store(session, recording_id, rt.settings)

    return on_stored


@task(name="process", task_run_name="process {n} recordings", cache_policy=NO_CACHE)
@failures_redacted
def process(
    recording_ids: list[int], n: int, run_id: str, batch_run_id: str, resend_unknown: bool = False
) -> None:
    """Take these recordings from wherever they are to stored, failed or rejected."""
    scope = RunScope(run_id, batch_run_id, worker_name(batch_run_id), resend_unknown)
    rt = runtime()
    Engine(rt, scope, on_stored=analyse(rt)).drive(recording_ids)


@task(name="sweep", task_run_name="sweep {n} recordings", cache_policy=NO_CACHE)
@failures_redacted
def sweep(recording_ids: list[int], n: int, run_id: str, others_done: Callable[[], bool]) -> None:
    """While the night's batches run on the work pool: take over what a dead worker left
    (expired leases) and, once every batch has ended, anything nobody took."""
    scope = RunScope(run_id, run_id, worker_name(run_id))
    rt = runtime()
    Engine(rt, scope, on_stored=analyse(rt)).drive(recording_ids, sweep_only=True, others_done=others_done)
