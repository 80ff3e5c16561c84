"""Provider rate limits shared by every worker, through Prefect global concurrency limits.

Each provider gets a Prefect *rate limit* (a global concurrency limit whose slots decay at the
provider's per-second rate) named `valence-api` / `valsea-api`. Every HTTP call acquires a
slot first, so any number of flow runs, processes or machines together stay under the
provider's per-second limit, and an operator can lower or raise it in the Prefect UI
(Concurrency -> Global) while a run is going. The longer windows (minute/hour/day) are paced by
each process's own `WindowRateLimiter`, and the server's 429 + `Retry-After` is the final word.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from valence_client.limiter import WindowRateLimiter

log = logging.getLogger(__name__)


def limit_name(provider: str) -> str:
    return f"{provider}-api"


def ensure_prefect_rate_limit(provider: str, per_second: int) -> None:
    """Create the provider's global limit if missing; an existing one (maybe tuned by an
    operator in the UI) is left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit_name(provider))
            return
        except ObjectNotFound:
            pass
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(
                name=limit_name(provider), limit=per_second, slot_decay_per_second=float(per_second)
            )
        )
        log.info("created Prefect rate limit %s at %d/s", limit_name(provider), per_second)


class SharedRateLimiter(WindowRateLimiter):
    """The in-process window limiter plus the cross-worker Prefect rate limit."""

    def __init__(self, provider: str, limits: Mapping[str, int]) -> None:
        super().__init__(limits, name=provider)
        self.provider = provider

    def acquire(self, cost: int = 1) -> None:
        from prefect.concurrency.sync import rate_limit

        super().acquire(cost)
        # strict=True: a missing limit is a setup bug, not a reason to run unthrottled.
        rate_limit(limit_name(self.provider), occupy=cost, strict=True)
