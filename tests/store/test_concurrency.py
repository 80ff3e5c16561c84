"""Two processes writing overlapping recordings at once end with one copy of each."""

from __future__ import annotations

import multiprocessing as mp

import sqlalchemy as sa

from results_store import db
from results_store.models import EmotionSegmentRow, Lineage, ProviderJob, Recording

from .factories import count, start_run
from .workers import write_overlapping


def test_concurrent_writers_store_each_recording_once(store: db.Store) -> None:
    with store.session_scope() as s:
        start_run(s)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    # 0..39 and 20..59: recordings 20..39 (and their jobs, segments, lineage) are written by both.
    workers = [
        ctx.Process(target=write_overlapping, args=(store.url, list(range(0, 40)), 1, start)),
        ctx.Process(target=write_overlapping, args=(store.url, list(range(20, 60)), 2, start)),
    ]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    with store.session_scope() as s:
        assert count(s, Recording) == 60
        assert count(s, ProviderJob) == 60
        assert count(s, EmotionSegmentRow) == 60 * 6
        assert count(s, Lineage) == 60
        distinct = s.execute(sa.select(sa.func.count(sa.distinct(Recording.key)))).scalar_one()
    assert distinct == 60


def test_concurrent_migrations_on_postgresql(pg_url: str) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        revisions = pool.map(db.upgrade, [pg_url, pg_url])
    assert revisions == [db.head_revision()] * 2
