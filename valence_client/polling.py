"""Waiting for a job is not failing: one poll loop for both providers.

`wait_for_job` polls with a growing, capped interval until the job is done, the deadline
passes, or the attempts run out. The server's `Retry-After` (on a 409 "not ready" or on a
status answer) replaces the computed interval for that round. A job the provider marks
`failed` is raised by the poll function itself as a `PredictionError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from valence_client._logging import get_logger
from valence_client.errors import JobNotReadyError, PredictionError

logger = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PollPolicy:
    """How to wait. `growth=1` gives the SDK's fixed interval; `None` disables a bound."""

    initial_interval_s: float = 2.0
    max_interval_s: float = 30.0
    growth: float = 1.5
    deadline_s: float | None = 900.0
    max_attempts: int | None = None


@dataclass(frozen=True)
class Poll(Generic[T]):
    """One look at a job: finished (with its value) or not, and the server's pacing hint."""

    done: bool
    value: T | None = None
    state: str = ""
    retry_after: float | None = None


def wait_for_job(
    poll: Callable[[], Poll[T]],
    *,
    policy: PollPolicy,
    job: str,
    provider: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Poll until done; raise `PredictionError(retryable=True)` when time or attempts run out."""
    started = clock()
    interval = policy.initial_interval_s
    attempt = 0
    while True:
        attempt += 1
        try:
            outcome = poll()
        except JobNotReadyError as exc:
            outcome = Poll(done=False, state="not ready", retry_after=exc.retry_after)
        if outcome.done:
            return outcome.value  # type: ignore[return-value]  # done implies a value
        delay = outcome.retry_after if outcome.retry_after is not None else interval
        elapsed = clock() - started
        if policy.max_attempts is not None and attempt >= policy.max_attempts:
            raise _gave_up(provider, job, outcome.state, f"after {attempt} polls")
        if policy.deadline_s is not None:
            if elapsed >= policy.deadline_s:
                raise _gave_up(provider, job, outcome.state, f"after {elapsed:.0f}s")
            delay = min(delay, policy.deadline_s - elapsed)
        logger.debug("%s job %s is %s; next poll in %.1fs", provider, job, outcome.state or "pending", delay)
        sleep(delay)
        interval = min(policy.max_interval_s, interval * policy.growth)


def _gave_up(provider: str, job: str, state: str, when: str) -> PredictionError:
    return PredictionError(
        f"{provider}: job {job} not completed {when} (last status: {state or 'unknown'})",
        job_id=job,
        request_id=job if provider == "valence" else None,
        retryable=True,
        provider=provider,
    )
