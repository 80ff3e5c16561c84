"""Notices in the results database: batching into a bounded number of events, re-sending after
a crash, the watcher's cursor across restarts, and the nightly's count of unannounced files."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
import sqlalchemy as sa

from notifications import ledger
from notifications.batching import Dispatcher
from notifications.ledger import UploadBatch
from notifications.messages import ObjectNotice
from notifications.watcher import Watcher
from results_store.db import Store
from valence_pipeline.s3 import ObjectVersion


def notice(i: int, version: str = "v1") -> ObjectNotice:
    return ObjectNotice(bucket="b", key=f"calls/{i:04d}.wav", version_id=version, etag=f"e{i}", source="s3")


def record(store: Store, notices: list[ObjectNotice], now: dt.datetime | None = None) -> int:
    with store.session_scope() as s:
        return ledger.record_notices(s, notices, now)


class Sent:
    def __init__(self, fail_after_send: int = 0) -> None:
        self.batches: list[UploadBatch] = []
        self.fail_after_send = fail_after_send

    def __call__(self, batch: UploadBatch) -> None:
        self.batches.append(batch)
        if self.fail_after_send:
            self.fail_after_send -= 1
            raise ConnectionError("lost the event server after sending")


def test_a_burst_becomes_batches_of_at_most_n(store: Store) -> None:
    record(store, [notice(i) for i in range(120)])
    sent = Sent()
    dispatcher = Dispatcher(store, sent, max_objects=50, max_wait_s=3600)
    assert dispatcher.tick() == 2  # two full batches; 20 wait for more or for time
    assert dispatcher.tick() == 0
    assert dispatcher.tick(flush=True) == 1
    sizes = [len(b.objects) for b in sent.batches]
    assert sizes == [50, 50, 20]
    keys = [o.key for b in sent.batches for o in b.objects]
    assert sorted(keys) == [f"calls/{i:04d}.wav" for i in range(120)]  # each exactly once


def test_a_lone_notice_goes_out_after_the_wait(store: Store) -> None:
    sent = Sent()
    dispatcher = Dispatcher(store, sent, max_objects=50, max_wait_s=30)
    record(store, [notice(1)])
    assert dispatcher.tick() == 0
    record(store, [notice(2)], now=ledger.utcnow() - dt.timedelta(seconds=31))
    assert dispatcher.tick() == 1
    assert [sorted(o.key for o in b.objects) for b in sent.batches] == [["calls/0001.wav", "calls/0002.wav"]]


def test_a_crash_after_sending_resends_the_same_batch_id(store: Store) -> None:
    record(store, [notice(i) for i in range(3)])
    sent = Sent(fail_after_send=1)
    dispatcher = Dispatcher(store, sent, max_objects=3, max_wait_s=3600)
    with pytest.raises(ConnectionError):
        dispatcher.tick()
    restarted = Dispatcher(store, sent, max_objects=3, max_wait_s=3600)
    assert restarted.tick() == 1
    assert restarted.tick() == 0
    first, again = sent.batches
    assert first == again  # same id: the event server takes it as one event


def test_a_batch_that_cannot_be_sent_does_not_hold_up_the_others(store: Store) -> None:
    record(store, [notice(i) for i in range(4)])
    attempts: list[str] = []

    def emit(batch: UploadBatch) -> None:
        attempts.append(batch.batch_id)
        if len(attempts) == 1:
            raise ConnectionError("this one failed")

    dispatcher = Dispatcher(store, emit, max_objects=2, max_wait_s=3600)
    with pytest.raises(ConnectionError):
        dispatcher.tick()
    assert len(attempts) == 2  # the second batch went out anyway
    assert dispatcher.tick() == 1  # and the first on the next tick
    assert attempts[2] == attempts[0]
    assert dispatcher.tick() == 0


def test_redelivered_notices_are_not_sent_again(store: Store) -> None:
    sent = Sent()
    dispatcher = Dispatcher(store, sent, max_objects=2, max_wait_s=3600)
    assert record(store, [notice(1), notice(2)]) == 2
    dispatcher.tick()
    assert record(store, [notice(1), notice(2)]) == 0
    assert record(store, [notice(1, version="v2")]) == 1  # rewritten: a new version
    dispatcher.tick(flush=True)
    assert [[(o.key, o.version_id) for o in b.objects] for b in sent.batches] == [
        [("calls/0001.wav", "v1"), ("calls/0002.wav", "v1")],
        [("calls/0001.wav", "v2")],
    ]


def _version(key: str, version_id: str, etag: str = "e") -> ObjectVersion:
    return ObjectVersion("b", key, version_id, etag, 10, dt.datetime(2026, 11, 29, tzinfo=dt.UTC))


def test_count_unannounced(store: Store) -> None:
    record(store, [notice(1), notice(2)])
    with store.session_scope() as s:
        ledger.record_notices(s, [notice(3)], baseline=True)
    found = [
        _version("calls/0001.wav", "v1"),  # announced
        _version("calls/0002.wav", "v2"),  # a later version nobody announced
        _version("calls/0003.wav", "v1"),  # only in a watcher's baseline
        _version("calls/0004.wav", "null", etag="abc"),  # unversioned, never announced
    ]
    with store.session_scope() as s:
        assert ledger.count_unannounced(s, found) == 3
        assert ledger.count_unannounced(s, []) == 0
    record(store, [ObjectNotice(bucket="b", key="calls/0004.wav", etag='"abc"', source="s3")])
    with store.session_scope() as s:
        assert ledger.count_unannounced(s, found) == 2


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.upload_fileobj(io.BytesIO(body), bucket, key)


def _announced(store: Store) -> list[tuple[str, str]]:
    with store.session_scope() as s:
        rows = s.execute(
            sa.text("select key, object_version from upload_notices where source = 'watch' order by id")
        ).all()
    return [(k, v) for k, v in rows]


def test_watcher_announces_each_version_once_across_restarts(
    store: Store, s3_client: Any, bucket: str
) -> None:
    _put(s3_client, bucket, "in/old.wav", b"already there")
    source = f"s3://{bucket}/in/"

    def watcher() -> Watcher:  # a fresh one per "process": only the database remembers
        return Watcher(store, s3_client, source, [".wav"])

    assert watcher().scan() == 0  # first scan: a baseline, left to the nightly run
    _put(s3_client, bucket, "in/a.wav", b"first")
    _put(s3_client, bucket, "in/notes.txt", b"not audio")
    w = watcher()
    assert w.scan() == 1
    assert w.scan() == 0
    # "killed and restarted" between two uploads
    _put(s3_client, bucket, "in/b.wav", b"second")
    _put(s3_client, bucket, "in/a.wav", b"first, rewritten")  # a new version of a
    assert watcher().scan() == 2
    assert watcher().scan() == 0
    versions: dict[str, list[str]] = {}
    for page in s3_client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            versions.setdefault(v["Key"], []).append(v["VersionId"])
    announced = _announced(store)
    assert sorted(announced) == sorted(
        [("in/a.wav", v) for v in versions["in/a.wav"]] + [("in/b.wav", versions["in/b.wav"][0])]
    )
    with store.session_scope() as s:
        assert ledger.cursor(s, source) is not None


def test_watcher_can_announce_what_is_already_there(store: Store, s3_client: Any, bucket: str) -> None:
    _put(s3_client, bucket, "x.wav", b"x")
    assert Watcher(store, s3_client, f"s3://{bucket}/", [".wav"], announce_existing=True).scan() == 1


def test_watcher_on_an_unversioned_bucket_tells_rewrites_apart_by_etag(store: Store, s3_client: Any) -> None:
    import uuid

    bucket = f"u-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)  # versioning never turned on
    w = Watcher(store, s3_client, f"s3://{bucket}/", [".wav"])
    assert w.scan() == 0
    _put(s3_client, bucket, "a.wav", b"one")
    assert w.scan() == 1
    _put(s3_client, bucket, "a.wav", b"one")  # the same bytes again: the same ETag, nothing new
    assert w.scan() == 0
    _put(s3_client, bucket, "a.wav", b"two")
    assert w.scan() == 1
    assert [v.startswith("etag:") for _, v in _announced(store)] == [True, True]
