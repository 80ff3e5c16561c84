"""Code run in child processes by the concurrency tests (importable, so `spawn` can find it)."""

from __future__ import annotations

import random
from typing import Any

from results_store import repository as repo
from results_store.db import Store
from results_store.models import JobStatus, Provider, RecordingStatus
from results_store.records import JobIn

from .factories import RUN_ID, recording_in, timeline


def write_overlapping(url: str, numbers: list[int], seed: int, start: Any) -> None:
    """Discover, submit and store results for `numbers`, a few per transaction, in shuffled
    order; the same recordings and external job ids are written by the other process."""
    numbers = list(numbers)
    random.Random(seed).shuffle(numbers)
    store = Store(url)
    start.wait(timeout=60)
    try:
        for i in range(0, len(numbers), 5):
            batch = numbers[i : i + 5]
            with store.session_scope() as s:
                refs = repo.upsert_recordings(s, [recording_in(n) for n in batch])
                for n, ref in zip(batch, refs, strict=True):
                    job = repo.upsert_provider_job(
                        s, JobIn(ref.id, Provider.VALENCE, "4emotions", f"req-{n}")
                    )
                    repo.save_emotion_segments(s, job, timeline(6, seed=n), flow_run_id=RUN_ID)
                    repo.update_job(s, job, status=JobStatus.COMPLETED)
                    repo.set_recording_status(s, ref.id, RecordingStatus.COMPLETED)
    finally:
        store.dispose()
