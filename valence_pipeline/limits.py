"""Provider rate limits shared by every worker, in every window, kept in the results database.

The pacing rules are the client's one `WindowRateLimiter`; this module only says where the
calls are counted: a `DatabaseLedger` keeps each admitted call as a row (`provider_calls`, a
sliding log), so a window's count is the rows younger than the window, whichever process or
machine made them. Admitting a call is one short transaction that locks the provider's
`provider_pacing` row (PostgreSQL `FOR UPDATE`; SQLite's write lock), so two workers can never
both take the last slot. No Prefect server round trip is on this path.

The limit in force (`provider_limits`) is the smallest of: the settings (rewritten when a
run starts, so a changed setting is never shadowed by an old value), an operator's override
(`valence-pipeline limits set`, obeyed by every worker within a second, even mid-run), and what
the provider reported (`/v1/rate-limit/status`). A 429's `Retry-After` pauses every worker.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from results_store.db import Store
from results_store.models import ProviderCall, ProviderLimit, ProviderPacing
from valence_client.limiter import WINDOW_SECONDS, WindowKind, WindowRateLimiter, check_limits, window_start

log = logging.getLogger(__name__)

LIMITS_TTL_S = 1.0
"""How long a worker trusts the limits it read (an operator's change reaches it within this)."""
ARRIVAL_MARGIN_S = 0.25
"""Each window is counted this much longer than its nominal length. A call is admitted here
and reaches the provider a little later (a pooled connection to wait for, a loaded machine):
two calls admitted just over a second apart can land in the same second of the provider's
count. The margin keeps that skew from becoming a 429, at a small cost in per-second pace."""
PRUNE_EVERY = 200
"""About one admission in this many deletes the calls older than the longest window."""


class DatabaseLedger:
    """A `CallLedger` in the results database, shared by every process that uses it.

    `windows` says how the provider counts (`valence_client.limiter.WindowKind`): with fixed
    windows a call counts until its window of the epoch ends (the last `ARRIVAL_MARGIN_S` of a
    window also count in the next one, for the call that arrives after the boundary); with
    sliding ones, for one window length (plus the margin) after it was admitted."""

    def __init__(
        self,
        store: Store,
        provider: str,
        *,
        clock: Callable[[], float] = time.time,
        windows: WindowKind = "sliding",
    ) -> None:
        self.store = store
        self.provider = provider
        self.windows: WindowKind = windows
        self._clock = clock
        self._cached: tuple[float, dict[str, int]] | None = None
        self._lock = threading.Lock()
        self._rng = random.Random()

    # --- limits ---------------------------------------------------------------------------
    def configure(self, limits: Mapping[str, int]) -> None:
        """The settings' limits: written over the configured column on every start."""
        self._write(check_limits(limits), column="configured")

    def learn_server_limits(self, limits: Mapping[str, int]) -> None:
        """What the provider says the account may do (a ceiling, never a raise)."""
        self._write(check_limits({k: v for k, v in limits.items() if k in WINDOW_SECONDS}), column="server")

    def set_operator_limits(self, limits: Mapping[str, int | None]) -> None:
        """An operator's override (None clears it); every worker obeys within `LIMITS_TTL_S`."""
        with self.store.session_scope() as s:
            for window, limit in limits.items():
                if window not in WINDOW_SECONDS:
                    raise ValueError(f"unknown window {window!r}; expected {sorted(WINDOW_SECONDS)}")
                if limit is not None and limit < 1:
                    raise ValueError(f"limit for {window!r} must be >= 1")
                row = s.get(ProviderLimit, (self.provider, window))
                if row is None:
                    if limit is None:
                        continue
                    raise LookupError(f"{self.provider} has no {window} limit yet (run once first)")
                row.operator = limit
        self._cached = None

    def _write(self, limits: dict[str, int], *, column: str) -> None:
        with self.store.session_scope() as s:
            self._ensure_pacing_row(s)
            for window, limit in limits.items():
                row = s.get(ProviderLimit, (self.provider, window))
                if row is None:
                    row = ProviderLimit(provider=self.provider, window=window, configured=limit)
                    s.add(row)
                setattr(row, column, limit)
        self._cached = None

    def _ensure_pacing_row(self, s: Session) -> None:
        if s.get(ProviderPacing, self.provider) is None:
            s.add(ProviderPacing(provider=self.provider, paused_until=0.0))
            s.flush()

    def limits(self) -> dict[str, int]:
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < LIMITS_TTL_S:
            return dict(cached[1])
        with self.store.session_scope() as s:
            limits = self._read_limits(s)
        self._cached = (now, limits)
        return dict(limits)

    def rows(self) -> list[ProviderLimit]:
        with self.store.session_scope() as s:
            rows = list(s.scalars(sa.select(ProviderLimit).where(ProviderLimit.provider == self.provider)))
            s.expunge_all()
            return rows

    def _read_limits(self, s: Session) -> dict[str, int]:
        rows = s.scalars(sa.select(ProviderLimit).where(ProviderLimit.provider == self.provider))
        return {row.window: row.effective for row in rows}

    # --- admission ------------------------------------------------------------------------
    def _locked_pause(self, s: Session) -> float:
        """Lock the provider's pacing row for this transaction; returns its pause-until time."""
        paused = s.execute(
            sa.select(ProviderPacing.paused_until)
            .where(ProviderPacing.provider == self.provider)
            .with_for_update()
        ).scalar_one_or_none()
        if paused is None:
            self._ensure_pacing_row(s)
            return 0.0
        return float(paused)

    def try_admit(self, cost: int) -> float:
        with self.store.session_scope() as s:
            paused_until = self._locked_pause(s)
            limits = self._read_limits(s)
            now = self._clock()
            wait = self._wait_needed(s, limits, now, cost, paused_until)
            if wait > 0:
                return wait
            s.execute(sa.insert(ProviderCall), [{"provider": self.provider, "at": now}] * cost)
            if limits and self._rng.randrange(PRUNE_EVERY) == 0:
                horizon = now - max(WINDOW_SECONDS[w] for w in limits)
                s.execute(
                    sa.delete(ProviderCall).where(
                        ProviderCall.provider == self.provider, ProviderCall.at <= horizon
                    )
                )
            return 0.0

    def _wait_needed(
        self, s: Session, limits: dict[str, int], now: float, cost: int, paused_until: float
    ) -> float:
        wait = paused_until - now
        if not limits:
            return wait
        fixed = self.windows == "fixed"
        span = {w: WINDOW_SECONDS[w] + ARRIVAL_MARGIN_S for w in limits}
        since = {w: self._counted_since(w, now) for w in limits}
        mine = ProviderCall.provider == self.provider
        used_in = self._used(s, since)
        for window in limits:
            excess = used_in[window] + cost - limits[window]
            if excess <= 0:
                continue
            if fixed:  # room again when the provider's window starts over
                wait = max(wait, window_start(now, WINDOW_SECONDS[window]) + WINDOW_SECONDS[window] - now)
                continue
            seconds = span[window]
            # The call whose expiry frees enough room: the `excess`-th oldest in the window.
            oldest = s.execute(
                sa.select(ProviderCall.at)
                .where(mine, ProviderCall.at > now - seconds)
                .order_by(ProviderCall.at)
                .offset(excess - 1)
                .limit(1)
            ).scalar_one()
            wait = max(wait, float(oldest) + seconds - now)
        return wait

    def _used(self, s: Session, since: Mapping[str, float]) -> dict[str, int]:
        """Per window, the calls admitted after its `since`: one scan counts every window."""
        windows = list(since)
        counts = s.execute(
            sa.select(*(sa.func.count().filter(ProviderCall.at > since[w]) for w in windows)).where(
                ProviderCall.provider == self.provider, ProviderCall.at > min(since.values())
            )
        ).one()
        return {w: int(n) for w, n in zip(windows, counts, strict=True)}

    def _counted_since(self, window: str, now: float) -> float:
        """Calls admitted after this moment still count in `window` at `now`."""
        seconds = WINDOW_SECONDS[window]
        if self.windows == "fixed":
            return window_start(now, seconds) - ARRIVAL_MARGIN_S
        return now - seconds - ARRIVAL_MARGIN_S

    def count_sliding(self) -> None:
        if self.windows != "sliding":
            log.warning(
                "%s refused a call that its fixed windows allowed: pacing by sliding windows", self.provider
            )
        self.windows = "sliding"

    def observe(self, seen: Mapping[str, tuple[int, float | None]]) -> None:
        seen = {w: v for w, v in seen.items() if w in WINDOW_SECONDS}
        if not seen:
            return
        with self.store.session_scope() as s:  # one transaction (one lock) for all the windows
            self._locked_pause(s)
            limits = self._read_limits(s)
            # Shortest first: what is added for a window counts in every longer one too.
            windows = sorted((w for w in seen if w in limits), key=lambda w: WINDOW_SECONDS[w])
            if not windows:
                return
            now = self._clock()
            used_in = self._used(s, {w: self._counted_since(w, now) for w in windows})
            fixed = self.windows == "fixed"
            rows: list[dict[str, Any]] = []
            for window in windows:
                remaining, reset_in_s = seen[window]
                seconds = WINDOW_SECONDS[window]
                missing = (limits[window] - max(0, remaining)) - used_in[window] - len(rows)
                stamp = now if reset_in_s is None or fixed else min(now, now + reset_in_s - seconds)
                if missing > 0 and stamp + seconds > now:
                    rows += [{"provider": self.provider, "at": stamp}] * missing
            if rows:
                s.execute(sa.insert(ProviderCall), rows)

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        with self.store.session_scope() as s:
            self._locked_pause(s)
            s.execute(
                sa.update(ProviderPacing)
                .where(ProviderPacing.provider == self.provider, ProviderPacing.paused_until < until)
                .values(paused_until=until)
            )
        log.info("%s asked us to wait %.1f s: every worker pauses", self.provider, seconds)


def database_limiter(
    store: Store, provider: str, limits: Mapping[str, int], windows: WindowKind = "sliding"
) -> WindowRateLimiter:
    """The provider's limiter for a pipeline process: the settings' limits, counted in the
    database every worker shares."""
    return WindowRateLimiter(limits, name=provider, ledger=DatabaseLedger(store, provider, windows=windows))


def describe(store: Store) -> list[dict[str, Any]]:
    """Every provider's limits, as `valence-pipeline limits show` prints them."""
    with store.session_scope() as s:
        rows = s.scalars(sa.select(ProviderLimit).order_by(ProviderLimit.provider, ProviderLimit.window))
        order = list(WINDOW_SECONDS)
        out = [
            {
                "provider": r.provider,
                "window": r.window,
                "configured": r.configured,
                "operator": r.operator,
                "server": r.server,
                "in force": r.effective,
            }
            for r in rows
        ]
    return sorted(out, key=lambda r: (r["provider"], order.index(r["window"])))
