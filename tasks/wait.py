"""Step 5: wait for every job in flight with one worker, not one sleeping worker per job.

Jobs sit in a heap ordered by when they are next worth asking about. The first question is
asked near the expected finish (the provider's pickup delay plus its documented processing
rate per audio hour), later ones back off with jitter up to a cap. Every call goes through the
provider's limiter (inside the client), and a 429 moves only that job back by `Retry-After`.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.submit import submit_item
from valence_client.errors import AuthenticationError, NotFoundError, RateLimitError, ValenceSDKException
from valence_pipeline.runtime import Runtime, runtime
from valence_pipeline.settings import Settings
from valence_pipeline.work import JobHandle

log = logging.getLogger(__name__)


def expected_seconds(handle: JobHandle, settings: Settings) -> float:
    """When the provider should be done, from its pickup delay and rate per audio hour."""
    hours = handle.item.info.duration_s / 3600.0
    if handle.item.provider == "valence":
        return settings.valence_pickup_delay_s + hours * settings.valence_s_per_audio_hour
    return settings.valsea_pickup_delay_s + hours * settings.valsea_s_per_audio_hour


class Backoff:
    """Capped exponential intervals with +-25% jitter; `rng` injectable for tests."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.first = settings.poll_min_interval_s
        self.cap = settings.poll_max_interval_s
        self.rng = rng or random.Random()

    def interval(self, attempt: int) -> float:
        base = min(self.cap, self.first * (2 ** max(0, attempt - 1)))
        return base * self.rng.uniform(0.75, 1.25)


def poll_once(rt: Runtime, handle: JobHandle) -> bool:
    """Ask once; True when the job reached a final state (recorded on the handle)."""
    if handle.item.provider == "valence":
        assert handle.external_id is not None
        status = rt.valence.asynch.status(handle.external_id)
        if status.status == "completed":
            handle.state, handle.segments = "completed", list(status.emotions)
        elif status.status == "failed":
            handle.state, handle.error_code, handle.error_message = (
                "failed",
                "provider_failed",
                "Valence reported failed",
            )
        return handle.state != "submitted"
    assert handle.external_id is not None
    job = rt.valsea.status(handle.external_id)
    if job.status == "completed":
        handle.state, handle.prosody = "completed", rt.valsea.result(handle.external_id)
    elif job.status == "failed":
        handle.state, handle.error_code, handle.error_message = (
            "failed",
            "provider_failed",
            "Valsea reported failed",
        )
    return handle.state != "submitted"


def _resubmit_expired(rt: Runtime, handle: JobHandle) -> JobHandle:
    """A Valsea result that expired before we fetched it is submitted again, once."""
    log.warning("%s expired before it was fetched; submitting again once", handle.item.label)
    fresh = submit_item(rt, handle.item, force_new=True)
    fresh.resubmitted = True
    return fresh


def await_all(
    rt: Runtime,
    handles: list[JobHandle],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_final: Callable[[JobHandle], None] | None = None,
) -> list[JobHandle]:
    """Poll every `submitted` handle until final or past the deadline; returns all handles."""
    settings = rt.settings
    backoff = Backoff(settings)
    results = list(handles)
    attempts = [0] * len(results)
    heap = [
        (h.submitted_at + expected_seconds(h, settings), i)
        for i, h in enumerate(results)
        if h.state == "submitted"
    ]
    heapq.heapify(heap)
    while heap:
        due, i = heapq.heappop(heap)
        sleep(max(0.0, due - clock()))
        handle = results[i]
        attempts[i] += 1
        next_due = clock() + backoff.interval(attempts[i])
        try:
            done = poll_once(rt, handle)
        except AuthenticationError:
            raise
        except RateLimitError as exc:
            done, next_due = False, clock() + max(exc.retry_after or 0.0, backoff.first)
        except NotFoundError as exc:
            if handle.item.provider == "valsea" and not handle.resubmitted:
                results[i] = handle = _resubmit_expired(rt, handle)
                attempts[i], done = 0, handle.state != "submitted"
                next_due = handle.submitted_at + expected_seconds(handle, settings)
            else:
                handle.state, handle.error_code, handle.error_message = "failed", "not_found", str(exc)
                done = True
        except ValenceSDKException as exc:
            if not exc.retryable:
                handle.state, handle.error_code, handle.error_message = (
                    "failed",
                    exc.error_code or "error",
                    str(exc),
                )
            done = handle.state != "submitted"
        if not done and clock() - handle.submitted_at > settings.poll_deadline_s:
            handle.state, handle.error_code = "failed", "timeout"
            handle.error_message = f"no result after {settings.poll_deadline_s:.0f} s"
            done = True
        if done:
            if on_final is not None:
                on_final(handle)
        else:
            heapq.heappush(heap, (next_due, i))
    return results


@task(name="await-results", task_run_name="await {n} jobs", cache_policy=NO_CACHE)
def await_results(handles: list[JobHandle], n: int) -> list[JobHandle]:
    """The one waiting task of a run."""
    return await_all(runtime(), handles)
