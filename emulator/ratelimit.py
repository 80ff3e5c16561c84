"""Per-key request counters over fixed second/minute/hour/day windows (real time).

Windows are aligned to the Unix epoch, so `reset` (the end of the current window, in epoch
seconds) is the same for every key, as in the SDK README's `/v1/rate-limit/status` example.
A refused request is not counted. Headers on every counted answer:

- ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (epoch seconds)
  of the *binding* window: the one with the fewest requests left (the longest on a tie);
- on 429 also ``Retry-After``: whole seconds until every exhausted window has reset (>= 1).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from emulator.config import WINDOWS


@dataclass(frozen=True)
class WindowState:
    name: str
    limit: int
    used: int
    reset: int
    """Epoch second at which this window starts over."""

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class Admission:
    allowed: bool
    windows: tuple[WindowState, ...]
    retry_after: int = 0

    def headers(self) -> dict[str, str]:
        binding = min(self.windows, key=lambda w: (w.remaining, -w.reset))
        out = {
            "X-RateLimit-Limit": str(binding.limit),
            "X-RateLimit-Remaining": str(binding.remaining),
            "X-RateLimit-Reset": str(binding.reset),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """Counters for one provider; `limits` are per (second, minute, hour, day)."""

    def __init__(self, limits: tuple[int, ...], clock: Callable[[], float] = time.time) -> None:
        self.limits = dict(zip((name for name, _ in WINDOWS), limits, strict=True))
        self._clock = clock
        self._lock = threading.Lock()
        # key -> window name -> (window index, count)
        self._counts: dict[str, dict[str, tuple[int, int]]] = {}

    def _windows(self, key: str, now: float) -> list[WindowState]:
        counts = self._counts.get(key, {})
        out = []
        for name, length in WINDOWS:
            index = int(now // length)
            stored_index, used = counts.get(name, (index, 0))
            out.append(
                WindowState(
                    name, self.limits[name], used if stored_index == index else 0, (index + 1) * length
                )
            )
        return out

    def admit(self, key: str) -> Admission:
        """Count one request for `key` unless a window is exhausted."""
        with self._lock:
            now = self._clock()
            windows = self._windows(key, now)
            full = [w for w in windows if w.used >= w.limit]
            if full:
                wait = max(w.reset for w in full) - now
                return Admission(False, tuple(windows), retry_after=max(1, math.ceil(wait)))
            counted = tuple(WindowState(w.name, w.limit, w.used + 1, w.reset) for w in windows)
            self._counts[key] = {
                w.name: (int(now // length), w.used) for w, (_, length) in zip(counted, WINDOWS, strict=True)
            }
            return Admission(True, counted)

    def peek(self, key: str) -> tuple[WindowState, ...]:
        """The current windows of `key`, without counting."""
        with self._lock:
            return tuple(self._windows(key, self._clock()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
