"""Provider limits counted in the results database: shared by every connection (every worker),
in every window, steerable while runs go, never shadowing the settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from commands.main import main
from results_store.db import Store
from valence_client.limiter import WindowRateLimiter
from valence_pipeline.limits import ARRIVAL_MARGIN_S, DatabaseLedger

LIMITS = {"second": 1000, "minute": 5, "hour": 1000, "day": 10000}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stores(migrated_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database: two workers' own engines and connections."""
    a, b = Store(migrated_url), Store(migrated_url)
    yield a, b
    a.dispose()
    b.dispose()


def ledgers(stores: tuple[Store, Store], clock: Clock) -> tuple[DatabaseLedger, DatabaseLedger]:
    a = DatabaseLedger(stores[0], "valence", clock=clock)
    b = DatabaseLedger(stores[1], "valence", clock=clock)
    a.configure(LIMITS)
    return a, b


def test_a_minute_window_is_shared_between_workers(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = ledgers(stores, clock)
    assert [a.try_admit(1) for _ in range(3)] == [0.0] * 3
    assert [b.try_admit(1) for _ in range(2)] == [0.0] * 2
    # The window is full for both: the oldest call frees a slot 60 s after it was admitted
    # (plus the margin for the time a call takes to reach the provider).
    assert b.try_admit(1) == pytest.approx(60.0 + ARRIVAL_MARGIN_S)
    assert a.try_admit(1) == pytest.approx(60.0 + ARRIVAL_MARGIN_S)
    clock.now += 60.0 + ARRIVAL_MARGIN_S
    assert b.try_admit(1) == 0.0


def test_fixed_windows_start_over_at_the_providers_boundary(stores: tuple[Store, Store]) -> None:
    """Counted as the provider counts (fixed windows of the epoch): a full minute frees when the
    minute turns, for both workers; a call in the last moments of a minute also counts in the
    next one, since it may reach the provider after the boundary."""
    clock = Clock()
    minute = 1_800_000_000.0  # a whole minute of Unix time
    clock.now = minute + 50.0
    a = DatabaseLedger(stores[0], "valence", clock=clock, windows="fixed")
    b = DatabaseLedger(stores[1], "valence", clock=clock, windows="fixed")
    a.configure(LIMITS)
    assert [a.try_admit(1) for _ in range(3)] == [0.0] * 3
    assert [b.try_admit(1) for _ in range(2)] == [0.0] * 2
    assert b.try_admit(1) == pytest.approx(10.0)  # until the minute turns, not 60 s
    clock.now = minute + 60.0
    assert [a.try_admit(1) for _ in range(5)] == [0.0] * 5
    assert b.try_admit(1) == pytest.approx(60.0)
    # One call just before the next turn counts in the minute after it, too.
    clock.now = minute + 180.0 - ARRIVAL_MARGIN_S / 2
    assert a.try_admit(1) == 0.0
    clock.now = minute + 180.0
    assert [b.try_admit(1) for _ in range(4)] == [0.0] * 4
    assert b.try_admit(1) == pytest.approx(60.0)


def test_a_429_makes_a_worker_count_sliding_windows(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    clock.now = 1_800_000_050.0
    a = DatabaseLedger(stores[0], "valence", clock=clock, windows="fixed")
    a.configure(LIMITS)
    assert [a.try_admit(1) for _ in range(5)] == [0.0] * 5
    a.count_sliding()
    clock.now += 10.0  # the minute turned, but the five are younger than a minute
    assert a.try_admit(1) == pytest.approx(50.0 + ARRIVAL_MARGIN_S)


def test_an_operator_lowers_a_limit_while_runs_go_and_clearing_restores_the_settings(
    stores: tuple[Store, Store], migrated_url: str
) -> None:
    clock = Clock()
    a, b = ledgers(stores, clock)
    assert main(["limits", "--database-url", migrated_url, "set", "valence", "minute=2"]) == 0
    b._cached = None
    assert b.limits()["minute"] == 2
    assert [b.try_admit(1) for _ in range(2)] == [0.0, 0.0]
    assert a.try_admit(1) > 0
    assert main(["limits", "--database-url", migrated_url, "clear", "valence"]) == 0
    assert a.try_admit(1) == 0.0  # the settings' 5 again


def test_a_changed_setting_is_never_shadowed_by_an_old_value(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, _ = ledgers(stores, clock)
    a.learn_server_limits({"minute": 50})  # the provider allows more: not a raise
    assert a.limits()["minute"] == 5
    a.configure({**LIMITS, "minute": 3})  # the next run starts with new settings
    assert a.limits()["minute"] == 3
    a.configure({**LIMITS, "minute": 8})
    assert a.limits()["minute"] == 8
    a.learn_server_limits({"minute": 4})  # the provider says less: obeyed
    assert a.limits()["minute"] == 4


def test_retry_after_pauses_every_worker(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = ledgers(stores, clock)
    a.pause(7.0)
    assert b.try_admit(1) == pytest.approx(7.0)
    clock.now += 7.0
    assert b.try_admit(1) == 0.0


def test_the_servers_count_fills_the_window(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = ledgers(stores, clock)
    a.observe({"minute": (1, None)})  # another client of the key used four
    assert b.try_admit(1) == 0.0
    assert b.try_admit(1) > 0


def test_threads_of_two_workers_never_exceed_a_window(stores: tuple[Store, Store]) -> None:
    """Real clocks, real concurrency: 2 x 4 threads race for a 10-per-second budget; no one-second
    interval ever holds more than 10 admitted calls."""
    per_second = {"second": 10, "minute": 1000, "hour": 10000, "day": 100000}
    limiters = [WindowRateLimiter(per_second, ledger=DatabaseLedger(store, "valsea")) for store in stores]
    admitted: list[float] = []
    lock = threading.Lock()

    def work(limiter: Any) -> None:
        import time

        for _ in range(5):
            limiter.acquire()
            with lock:
                admitted.append(time.time())

    threads = [threading.Thread(target=work, args=(lim,)) for lim in limiters for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted.sort()
    assert len(admitted) == 40
    # Admission stamps are taken inside the transaction; the thread's own stamp comes a little
    # later, so compare against the database's log, which is what the next caller counts.
    import sqlalchemy as sa

    with stores[0].session_scope() as s:
        log = sorted(s.scalars(sa.text("select at from provider_calls where provider = 'valsea'")))
    assert len(log) == 40
    busiest = max(sum(1 for t in log if start <= t < start + 1.0 + ARRIVAL_MARGIN_S) for start in log)
    assert busiest <= 10


def test_one_response_is_one_ledger_transaction_and_its_windows_add_up(
    stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response's `X-RateLimit-*` headers for every window are applied in one transaction
    (the shared lock is every worker's), and what fills a short window counts in the longer
    ones: the provider saw 3 calls this second and 4 this minute, we counted 1, so 3 more are
    in the minute, not 2 + 3."""
    clock = Clock()
    a, b = ledgers(stores, clock)
    limiter = WindowRateLimiter(LIMITS, ledger=a, clock=clock, wall_clock=clock)
    assert a.try_admit(1) == 0.0
    transactions = 0
    real_scope = stores[0].session_scope

    def counted_scope(*args: Any, **kwargs: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return real_scope(*args, **kwargs)

    monkeypatch.setattr(stores[0], "session_scope", counted_scope)
    limiter.update_from_headers(
        {
            "X-RateLimit-Remaining-second": str(LIMITS["second"] - 3),
            "X-RateLimit-Remaining-minute": str(LIMITS["minute"] - 4),
            "X-RateLimit-Remaining-hour": str(LIMITS["hour"] - 4),
            "X-RateLimit-Remaining-day": str(LIMITS["day"] - 4),
        }
    )
    assert transactions == 1
    assert b.try_admit(1) == 0.0  # the minute's fifth call
    assert b.try_admit(1) > 0
