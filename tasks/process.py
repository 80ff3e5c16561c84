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

from valence_pipeline.engine import Engine, RunScope
from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)


def worker_name(batch_run_id: str) -> str:
    """Who holds leases: this host and process, for this run (unique even if ids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{batch_run_id[:8]}:{uuid.uuid4().hex[:6]}"


@task(name="process", task_run_name="process {n} recordings", cache_policy=NO_CACHE)
def process(
    recording_ids: list[int], n: int, run_id: str, batch_run_id: str, resend_unknown: bool = False
) -> None:
    """Take these recordings from wherever they are to stored, failed or rejected."""
    scope = RunScope(run_id, batch_run_id, worker_name(batch_run_id), resend_unknown)
    Engine(runtime(), scope).drive(recording_ids)


@task(name="sweep", task_run_name="sweep {n} recordings", cache_policy=NO_CACHE)
def sweep(recording_ids: list[int], n: int, run_id: str, others_done: Callable[[], bool]) -> None:
    """While the night's batches run on the work pool: take over what a dead worker left
    (expired leases) and, once every batch has ended, anything nobody took."""
    scope = RunScope(run_id, run_id, worker_name(run_id))
    Engine(runtime(), scope).drive(recording_ids, sweep_only=True, others_done=others_done)
