"""Client-side pacing per provider, so we slow down before the server has to say 429.

`RateLimiter` is the interface the transport calls; `WindowRateLimiter` is the one
implementation. Where it counts is a `CallLedger`: `MemoryLedger` for one process, or one that
the pipeline keeps in its database so that every worker shares one budget per provider.

The in-process ledger keeps, per window (second, minute, hour, day), the times of the calls it
admitted: a token bucket whose tokens come back exactly one window after they were spent. That
makes the guarantee exact: in ANY interval as long as a window, no more calls are admitted than
that window's limit (a refilling bucket would let up to twice the limit through at a boundary).
The memory cost is one float per admitted call per window (10,000 for the documented day limit).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from valence_client._headers import header, seconds_until
from valence_client._logging import get_logger

logger = get_logger(__name__)

WINDOW_SECONDS: dict[str, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
DEFAULT_LIMITS: dict[str, int] = {"second": 10, "minute": 100, "hour": 1000, "day": 10000}
"""The example limits in the SDK README (10/s, 100/min, 1,000/h, 10,000/day)."""

# Smallest sleep; stops a float rounding remainder from spinning the acquire loop.
_MIN_SLEEP = 1e-4


@runtime_checkable
class RateLimiter(Protocol):
    """What the transport needs from a limiter."""

    def acquire(self, cost: int = 1) -> None:
        """Block until `cost` calls may be made now, then count them (the backpressure)."""

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from a response's headers. `X-RateLimit-*` correct the remaining budget;
        `Retry-After` is only passed on a 429 and pauses every caller for that long."""

    def configure(self, limits: Mapping[str, int]) -> None:
        """Replace window limits, e.g. `{"minute": 100}` from `/v1/rate-limit/status`."""


@runtime_checkable
class UsageAware(Protocol):
    """Optional: a limiter that can also take the server's count of what is left."""

    def observe(self, window: str, remaining: int, reset_in_s: float | None = None) -> None: ...


WindowKind = Literal["fixed", "sliding"]
"""How the provider counts: `fixed` windows that start over at whole multiples of their length
from the Unix epoch (what a per-window `reset` timestamp, as `/v1/rate-limit/status` reports,
means), or `sliding` ones (any interval as long as the window). Pacing by fixed windows uses the
whole quota of each window; pacing by sliding ones is safe with any provider, but after a burst
it waits a full window from the burst, not to the window's end."""


def window_start(now: float, seconds: float) -> float:
    """Start of the fixed window of length `seconds` that `now` (Unix time) falls in."""
    return math.floor(now / seconds) * seconds


@dataclass
class _Window:
    seconds: float
    limit: int
    admitted: deque[float] = field(default_factory=deque)
    fixed: bool = False

    def prune(self, now: float) -> None:
        # Sliding: a call admitted at t counts for [t, t + seconds). Fixed: until its window ends.
        if self.fixed:
            start = window_start(now, self.seconds)
            while self.admitted and self.admitted[0] < start:
                self.admitted.popleft()
            return
        while self.admitted and self.admitted[0] + self.seconds <= now:
            self.admitted.popleft()

    def wait_for(self, now: float, cost: int) -> float:
        excess = len(self.admitted) + cost - self.limit
        if excess <= 0:
            return 0.0
        if self.fixed:
            return window_start(now, self.seconds) + self.seconds - now
        return self.admitted[excess - 1] + self.seconds - now


def check_limits(limits: Mapping[str, int]) -> dict[str, int]:
    for name, limit in limits.items():
        if name not in WINDOW_SECONDS:
            raise ValueError(f"unknown rate-limit window {name!r}; expected {sorted(WINDOW_SECONDS)}")
        if int(limit) < 1:
            raise ValueError(f"rate limit for {name!r} must be >= 1, got {limit}")
    return {name: int(limit) for name, limit in limits.items()}


@runtime_checkable
class CallLedger(Protocol):
    """Where a limiter keeps its limits and the calls it admitted.

    `MemoryLedger` is this process's; the pipeline plugs in one kept in its database, so that
    every worker on every machine shares one budget per provider. The pacing rules (windows,
    pauses, what headers mean) stay in `WindowRateLimiter`: one limiter, two places to count.
    """

    def configure(self, limits: Mapping[str, int]) -> None: ...

    def limits(self) -> dict[str, int]: ...

    def try_admit(self, cost: int) -> float:
        """Count `cost` calls now and return 0.0, or count nothing and return how long to wait."""

    def observe(self, seen: Mapping[str, tuple[int, float | None]]) -> None:
        """The server's count of what is left, per window (`{window: (remaining, reset_in_s)}`,
        all of one response's windows at once): where it counted more calls than we did, fill
        the window up to its count."""

    def pause(self, seconds: float) -> None:
        """Nobody calls for `seconds` (the server said 429 with Retry-After)."""

    def count_sliding(self) -> None:
        """From now on count every window as sliding (the provider refused a call that fixed
        windows allowed, so it does not count the way we thought)."""


class MemoryLedger:
    """One process's count, thread-safe: per window, the times of the calls it admitted.

    `windows="fixed"` needs a Unix-time clock (the windows are aligned to the epoch); it is
    the default clock then."""

    def __init__(self, clock: Callable[[], float] | None = None, windows: WindowKind = "sliding") -> None:
        self._fixed = windows == "fixed"
        self._clock = clock or (time.time if self._fixed else time.monotonic)
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._paused_until = float("-inf")

    def configure(self, limits: Mapping[str, int]) -> None:
        checked = check_limits(limits)
        with self._lock:
            for name, limit in checked.items():
                window = self._windows.get(name)
                if window is None:
                    self._windows[name] = _Window(WINDOW_SECONDS[name], limit, fixed=self._fixed)
                else:
                    window.limit = limit

    def limits(self) -> dict[str, int]:
        with self._lock:
            return {name: w.limit for name, w in self._windows.items()}

    def try_admit(self, cost: int) -> float:
        with self._lock:
            now = self._clock()
            wait = self._paused_until - now
            for window in self._windows.values():
                window.prune(now)
                wait = max(wait, window.wait_for(now, cost))
            if wait <= 0:
                for window in self._windows.values():
                    window.admitted.extend([now] * cost)
            return max(0.0, wait)

    def observe(self, seen: Mapping[str, tuple[int, float | None]]) -> None:
        with self._lock:
            now = self._clock()
            for window, (remaining, reset_in_s) in seen.items():
                target = self._windows.get(window)
                if target is None:
                    continue
                target.prune(now)
                missing = (target.limit - max(0, remaining)) - len(target.admitted)
                if missing <= 0:
                    continue
                # Sliding: placeholders that leave the window when the server's count resets.
                stamp = (
                    now if reset_in_s is None or target.fixed else min(now, now + reset_in_s - target.seconds)
                )
                if stamp + target.seconds <= now:
                    continue
                target.admitted = deque(sorted([*target.admitted, *([stamp] * missing)]))

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def count_sliding(self) -> None:
        with self._lock:
            # Stamps stay comparable: a fixed ledger's clock is Unix time, and stays so.
            self._fixed = False
            for window in self._windows.values():
                window.fixed = False


class WindowRateLimiter:
    """Thread-safe limiter over second/minute/hour/day windows with an injectable clock.

    The guarantee is exact: with `windows="sliding"` (the default), in ANY interval as long as a
    window, no more calls are admitted than that window's limit; with `"fixed"`, in any of the
    provider's fixed windows (see `WindowKind`). A 429 with `Retry-After` pauses every caller and
    turns fixed counting into sliding. `ledger` is where calls are counted (this process by
    default); `clock`/`sleep` must agree for the default ledger (monotonic seconds, Unix time
    for fixed windows); `wall_clock` converts Unix-time reset headers. `waits` and `waited_s` count the backpressure applied.
    """

    def __init__(
        self,
        limits: Mapping[str, int] | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        name: str = "",
        ledger: CallLedger | None = None,
        windows: WindowKind = "sliding",
    ) -> None:
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.name = name
        self.ledger: CallLedger = ledger if ledger is not None else MemoryLedger(clock, windows)
        self.waits = 0
        self.waited_s = 0.0
        self._stats_lock = threading.Lock()
        self.configure(DEFAULT_LIMITS if limits is None else limits)

    @property
    def limits(self) -> dict[str, int]:
        return self.ledger.limits()

    def configure(self, limits: Mapping[str, int]) -> None:
        self.ledger.configure(limits)

    def acquire(self, cost: int = 1) -> None:
        if cost < 1:
            raise ValueError("cost must be >= 1")
        too_big = [n for n, limit in self.limits.items() if cost > limit]
        if too_big:
            raise ValueError(f"cost {cost} exceeds the {too_big[0]} limit; it could never be admitted")
        while True:
            wait = self.ledger.try_admit(cost)
            if wait <= 0:
                return
            with self._stats_lock:
                self.waits += 1
                self.waited_s += wait
            logger.debug("rate limiter %s: waiting %.3fs", self.name or "-", wait)
            self._sleep(max(wait, _MIN_SLEEP))

    def observe(self, window: str, remaining: int, reset_in_s: float | None = None) -> None:
        """Take the server's word that only `remaining` calls are left in `window`.

        If the server counted more calls than we did (other clients share the key), placeholder
        entries are added that expire when the server's window resets.
        """
        self.ledger.observe({window: (remaining, reset_in_s)})

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (the server asked us to, via Retry-After)."""
        self.ledger.pause(seconds)

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        now_wall = self._wall_clock()
        pause = seconds_until(header(headers, "Retry-After"), now_wall)
        if pause:
            self.pause(pause)
            self.ledger.count_sliding()
        seen: dict[str, tuple[int, float | None]] = {}
        for name in WINDOW_SECONDS:
            remaining = header(headers, f"X-RateLimit-Remaining-{name}")
            if remaining is not None:
                reset = seconds_until(header(headers, f"X-RateLimit-Reset-{name}"), now_wall)
                _note(seen, name, remaining, reset)
        self._observe_generic(headers, now_wall, seen)
        if seen:
            # One ledger update for the response's windows: a shared ledger takes its lock once
            # per response, not once per header (it is every worker's lock).
            self.ledger.observe(seen)

    def _observe_generic(
        self, headers: Mapping[str, str], now_wall: float, seen: dict[str, tuple[int, float | None]]
    ) -> None:
        """Plain `X-RateLimit-Limit/Remaining/Reset`: applied to the window with that limit (or,
        named by `X-RateLimit-Window`); an exhausted budget of unknown window pauses until reset."""
        remaining = header(headers, "X-RateLimit-Remaining")
        if remaining is None:
            return
        reset = seconds_until(header(headers, "X-RateLimit-Reset"), now_wall)
        window = (header(headers, "X-RateLimit-Window") or "").strip().lower() or None
        if window is None:
            limit = header(headers, "X-RateLimit-Limit")
            matches = [
                n for n, value in self.limits.items() if limit is not None and str(value) == limit.strip()
            ]
            window = matches[0] if matches else None
        if window is not None:
            _note(seen, window, remaining, reset)
        elif remaining.strip() in {"0", "0.0"} and reset:
            self.pause(reset)


def _note(
    seen: dict[str, tuple[int, float | None]], window: str, remaining: str, reset: float | None
) -> None:
    """Add a header's count to `seen`; of two counts for one window the smaller wins (the
    server has seen at least that many calls)."""
    try:
        count = int(float(remaining))
    except ValueError:
        return
    if window in seen and seen[window][0] <= count:
        return
    seen[window] = (count, reset)


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str], WindowRateLimiter] = {}


def shared_limiter(
    provider: str, limits: Mapping[str, int] | None = None, *, scope: str = ""
) -> WindowRateLimiter:
    """The process-wide limiter of `provider` (and `scope`, e.g. a fingerprint of base URL and
    key), so every client of one account shares one budget. `limits`, when given, (re)configures it.
    """
    with _registry_lock:
        limiter = _registry.get((provider, scope))
        if limiter is None:
            limiter = _registry[(provider, scope)] = WindowRateLimiter(limits, name=provider)
            return limiter
    if limits is not None:
        limiter.configure(limits)
    return limiter
