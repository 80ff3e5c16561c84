"""The client-side limiter: exact window guarantee (property), headers, server sync, threads."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.client.conftest import Sleeps
from valence_client import DEFAULT_LIMITS, RateLimiter, WindowRateLimiter, shared_limiter
from valence_client.limiter import WINDOW_SECONDS


class FakeTime:
    """Clock and sleep for the limiter: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def admitted_in_any_window(times: list[float], seconds: float) -> int:
    """The most admissions inside any half-open interval [t, t + seconds)."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while times[start] + seconds <= t:
            start += 1
        best = max(best, end - start + 1)
    return best


def drive(
    limiter: WindowRateLimiter, fake: FakeTime, limits: dict[str, int], steps: list[tuple[float, int]]
) -> list[float]:
    """Acquire `cost` after each `gap`; the (fake) times of every admitted call."""
    admitted: list[float] = []
    for gap, cost in steps:
        fake.now += gap
        cost = min(cost, *limits.values())
        limiter.acquire(cost)
        admitted.extend([fake.now] * cost)
    return admitted


limits_strategy = st.fixed_dictionaries(
    {},
    optional={
        "second": st.integers(1, 5),
        "minute": st.integers(1, 40),
        "hour": st.integers(1, 80),
    },
).filter(bool)
steps = st.lists(
    st.tuples(st.floats(0, 90, allow_nan=False), st.integers(1, 3)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(limits=limits_strategy, steps=steps)
def test_no_window_ever_admits_more_than_its_limit(
    limits: dict[str, int], steps: list[tuple[float, int]]
) -> None:
    fake = FakeTime()
    limiter = WindowRateLimiter(limits, clock=fake.clock, sleep=fake.sleep)
    admitted = drive(limiter, fake, limits, steps)
    for name, limit in limits.items():
        assert admitted_in_any_window(admitted, WINDOW_SECONDS[name]) <= limit


def admitted_in_any_fixed_window(times: list[float], seconds: float) -> int:
    """The most admissions inside one window [k * seconds, (k + 1) * seconds)."""
    counts: dict[int, int] = {}
    for t in times:
        counts[int(t // seconds)] = counts.get(int(t // seconds), 0) + 1
    return max(counts.values(), default=0)


@settings(max_examples=150, deadline=None)
@given(limits=limits_strategy, steps=steps, start=st.floats(0, 3600, allow_nan=False))
def test_fixed_windows_never_admit_more_than_the_limit_in_any_window_of_the_epoch(
    limits: dict[str, int], steps: list[tuple[float, int]], start: float
) -> None:
    fake = FakeTime()
    fake.now = 1_800_000_000.0 + start  # Unix time: the windows are the epoch's
    limiter = WindowRateLimiter(limits, clock=fake.clock, sleep=fake.sleep, windows="fixed")
    admitted = drive(limiter, fake, limits, steps)
    for name, limit in limits.items():
        assert admitted_in_any_fixed_window(admitted, WINDOW_SECONDS[name]) <= limit


def test_fixed_windows_use_the_whole_quota_of_each_window() -> None:
    """5 calls a minute, starting 50 s into a minute: 5 at once, 5 more when the minute turns
    (a sliding count would hold the second five for a full minute)."""
    fake = FakeTime()
    start = 1_800_000_050.0  # 1_800_000_000 is a whole minute of Unix time
    fake.now = start
    fixed = WindowRateLimiter({"minute": 5}, clock=fake.clock, sleep=fake.sleep, windows="fixed")
    for _ in range(10):
        fixed.acquire()
    assert fake.now == pytest.approx(start + 10.0)
    fake.now = start
    sliding = WindowRateLimiter({"minute": 5}, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        sliding.acquire()
    assert fake.now == pytest.approx(start + 60.0)


def test_a_429_turns_fixed_counting_into_sliding() -> None:
    fake = FakeTime()
    start = 1_800_000_050.0
    fake.now = start
    limiter = WindowRateLimiter(
        {"minute": 2}, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.clock, windows="fixed"
    )
    limiter.acquire()
    limiter.acquire()
    limiter.update_from_headers({"Retry-After": "1"})  # refused: the provider counts otherwise
    limiter.acquire()  # fixed counting would go at the turn of the minute, 10 s on
    assert fake.now == pytest.approx(start + 60.0)


@settings(max_examples=50, deadline=None)
@given(limit=st.integers(1, 10), calls=st.integers(1, 40))
def test_it_admits_as_soon_as_a_slot_frees(limit: int, calls: int) -> None:
    """Backpressure, not starvation: n calls at a 'limit per second' take ceil(n/limit)-1 s."""
    fake = FakeTime()
    limiter = WindowRateLimiter({"second": limit}, clock=fake.clock, sleep=fake.sleep)
    for _ in range(calls):
        limiter.acquire()
    assert fake.now == pytest.approx((calls - 1) // limit, abs=1e-3)


def test_defaults_are_the_documented_limits() -> None:
    assert (
        WindowRateLimiter().limits
        == DEFAULT_LIMITS
        == {"second": 10, "minute": 100, "hour": 1000, "day": 10000}
    )
    assert isinstance(WindowRateLimiter(), RateLimiter)


def test_configure_replaces_limits_and_rejects_nonsense() -> None:
    limiter = WindowRateLimiter()
    limiter.configure({"minute": 60})
    assert limiter.limits["minute"] == 60
    with pytest.raises(ValueError):
        limiter.configure({"fortnight": 3})
    with pytest.raises(ValueError):
        limiter.configure({"second": 0})
    with pytest.raises(ValueError):
        limiter.acquire(cost=11)  # more than the per-second limit: could never be admitted


def test_retry_after_pauses_every_caller() -> None:
    fake = FakeTime()
    limiter = WindowRateLimiter(clock=fake.clock, sleep=fake.sleep)
    limiter.update_from_headers({"Retry-After": "4"})
    limiter.acquire()
    assert fake.now == pytest.approx(4.0, abs=1e-3)


def test_rate_limit_headers_of_a_known_window_correct_the_budget() -> None:
    """The server counted 95 of 100 this minute (other clients share the key): 5 left."""
    fake = FakeTime()
    limiter = WindowRateLimiter(
        {"minute": 100}, clock=fake.clock, sleep=fake.sleep, wall_clock=lambda: 1_800_000_000.0
    )
    limiter.update_from_headers(
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "1800000030"}
    )
    for _ in range(5):
        limiter.acquire()
    assert fake.now == 0.0
    limiter.acquire()  # the sixth waits for the server's window to reset, 30 s from now
    assert fake.now == pytest.approx(30.0, abs=1e-3)


def test_exhausted_unknown_window_pauses_until_reset() -> None:
    fake = FakeTime()
    limiter = WindowRateLimiter({"second": 10}, clock=fake.clock, sleep=fake.sleep, wall_clock=lambda: 0.0)
    limiter.update_from_headers(
        {"X-RateLimit-Limit": "777", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9"}
    )
    limiter.acquire()
    assert fake.now == pytest.approx(9.0, abs=1e-3)


def test_threads_share_one_budget() -> None:
    """Eight threads, 40 calls, 10 per second, on a shared fake clock: never more than 10 in
    any second, and every call gets through."""
    lock = threading.Lock()
    fake = FakeTime()

    def sleep(seconds: float) -> None:
        with lock:
            fake.now += seconds / 8  # each sleeper moves time a little; together they pass it

    limiter = WindowRateLimiter({"second": 10}, clock=fake.clock, sleep=sleep)
    admitted: list[float] = []

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                admitted.append(fake.now)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(admitted) == 40
    assert admitted_in_any_window(sorted(admitted), 1.0) <= 10


def test_shared_limiter_is_one_per_provider_and_scope() -> None:
    a = shared_limiter("valence", scope="test-scope-a")
    assert shared_limiter("valence", scope="test-scope-a") is a
    assert shared_limiter("valsea", scope="test-scope-a") is not a
    shared_limiter("valence", {"second": 3}, scope="test-scope-a")
    assert a.limits["second"] == 3


def test_client_fixture_sleeps_are_recorded_by_the_limiter() -> None:
    sleeps = Sleeps()
    limiter = sleeps.limiter({"second": 1})
    limiter.acquire()
    limiter.acquire()
    assert sleeps == [1.0]
