"""Seeded fault injection.

Spec (flag `--faults`, env `VALENCE_EMULATOR_FAULTS`, or `PUT /_emulator/faults`)::

    5xx=0.1,429=0.05,drop=0.02,lost=0.01,slow=0.05,slow_s=2,fail=0.1,parts=1,retry_after=1

Per API request one outcome is drawn (probabilities add up to at most 1):

- ``5xx``  answer 500, 502 or 503 **before** the handler runs: nothing changed, a retry is safe.
- ``429``  answer 429 with ``Retry-After: retry_after`` before the handler runs (the request
  has already passed, and counted against, the real rate limiter: faults come after it).
- ``drop`` close the connection without any HTTP answer before the handler runs (the client
  sees a connection error; nothing changed).
- ``lost`` run the handler (its effects stay: a job exists, a call is billed), then close the
  connection instead of answering: the "did my request happen?" case a client must survive.

Independently, ``slow`` delays the request by ``slow_s`` seconds before it is handled, and
``fail`` makes a newly created async request or Valsea job end in ``failed``. Faults hit the
provider API paths (``/v1/...``); presigned part PUTs only with ``parts=1``; never the admin
paths (``/_emulator/...``, ``/health``). ``part_slow_s`` delays every presigned part PUT by that
many seconds and nothing else (an upload that stays in flight long enough to be caught there).

Replay: the n-th request to a route (e.g. ``POST /v1/prosody``) draws from a generator seeded
with ``(seed, route, n)``, so the same sequence of calls meets the same faults on every run,
however calls to *other* routes interleave.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, fields
from typing import Literal

Outcome = Literal["5xx", "429", "drop", "lost"]
_NAMES = {"5xx": "p_5xx", "429": "p_429"}


@dataclass(frozen=True)
class FaultSpec:
    p_5xx: float = 0.0
    p_429: float = 0.0
    drop: float = 0.0
    lost: float = 0.0
    slow: float = 0.0
    slow_s: float = 2.0
    fail: float = 0.0
    parts: bool = False
    part_slow_s: float = 0.0
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("p_5xx", "p_429", "drop", "lost", "slow", "fail"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault probability {name}={value} is not within [0, 1]")
        if self.p_5xx + self.p_429 + self.drop + self.lost > 1.0 + 1e-9:
            raise ValueError("5xx + 429 + drop + lost must not exceed 1")
        if self.slow_s < 0 or self.part_slow_s < 0 or self.retry_after < 0:
            raise ValueError("slow_s, part_slow_s and retry_after must not be negative")

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        """Parse 'name=value,...'; empty or None means no faults. Unknown names are errors."""
        values: dict[str, object] = {}
        known = {f.name for f in fields(cls)}
        for item in (text or "").replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, raw = item.partition("=")
            name = _NAMES.get(name.strip(), name.strip())
            if not sep or name not in known:
                raise ValueError(f"bad fault item {item!r}; expected e.g. 5xx=0.1,429=0.05,drop=0.02")
            raw = raw.strip()
            if name == "parts":
                values[name] = raw.lower() in {"1", "true", "yes", "on"}
            elif name == "retry_after":
                values[name] = int(raw)
            else:
                values[name] = float(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_text(self) -> str:
        """The canonical spec string (only non-default items)."""
        default = FaultSpec()
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                name = {v: k for k, v in _NAMES.items()}.get(f.name, f.name)
                out.append(f"{name}={int(value) if isinstance(value, bool) else value}")
        return ",".join(out)


@dataclass(frozen=True)
class FaultDecision:
    outcome: Outcome | None = None
    status: int = 0
    """The status of a `5xx` outcome."""
    delay_s: float = 0.0


NO_FAULT = FaultDecision()


class FaultInjector:
    """Draws faults per route from (seed, route, n); thread-safe; `reset` restarts the counts."""

    def __init__(self, spec: FaultSpec, seed: int) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._spec = spec
        self._counts: dict[str, int] = {}

    @property
    def spec(self) -> FaultSpec:
        return self._spec

    def reset(self, spec: FaultSpec) -> None:
        with self._lock:
            self._spec = spec
            self._counts.clear()

    def _rng(self, route: str) -> tuple[random.Random, FaultSpec]:
        with self._lock:
            n = self._counts.get(route, 0)
            self._counts[route] = n + 1
            spec = self._spec
        return random.Random(f"{self._seed}:{route}:{n}"), spec

    def decide(self, route: str, *, part: bool = False) -> FaultDecision:
        if part and not self._spec.parts:
            return FaultDecision(delay_s=self._spec.part_slow_s) if self._spec.part_slow_s else NO_FAULT
        rng, spec = self._rng(route)
        u = rng.random()
        slow = rng.random() < spec.slow
        status = rng.choice((500, 502, 503))
        delay = (spec.slow_s if slow else 0.0) + (spec.part_slow_s if part else 0.0)
        outcome: Outcome | None = None
        for name, p in (("drop", spec.drop), ("5xx", spec.p_5xx), ("429", spec.p_429), ("lost", spec.lost)):
            if u < p:
                outcome = name  # type: ignore[assignment]
                break
            u -= p
        if outcome is None and delay == 0.0:
            return NO_FAULT
        return FaultDecision(outcome=outcome, status=status, delay_s=delay)

    def job_fails(self, provider: str) -> bool:
        """Whether the next job of `provider` ends in `failed` (drawn once, at creation)."""
        rng, spec = self._rng(f"job:{provider}")
        return rng.random() < spec.fail
