"""The upload notices in the results database: recorded once per object version, grouped into
batches (one upload event each), and counted by the nightly sweep.

Every function takes a Session (the caller owns the transaction, `Store.session_scope()`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from notifications.messages import ObjectNotice
from results_store.models import UploadNotice, WatchCursor, object_version
from valence_pipeline.s3 import ObjectVersion


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which is the one with `on_conflict_do_nothing`."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"the results store supports SQLite and PostgreSQL databases, not {dialect}")


BASELINE = "baseline"
"""Batch id (and source) of versions a watcher found already there on its first scan: kept so
they are not announced later, never sent, and not counted as announced."""


def record_notices(
    session: Session,
    notices: Sequence[ObjectNotice],
    now: dt.datetime | None = None,
    *,
    baseline: bool = False,
) -> int:
    """Store the notices; a version already noticed (a duplicate, a redelivery, the watcher
    seeing what the webhook saw) is left as it is. Returns how many were new."""
    if not notices:
        return 0
    now = now or utcnow()
    sent = {"batch_id": BASELINE, "emitted_at": now, "source": BASELINE} if baseline else {}
    rows = {
        (n.bucket, n.key, n.object_version): {
            "bucket": n.bucket,
            "key": n.key,
            "object_version": n.object_version,
            "version_id": n.version_id,
            "etag": n.etag,
            "size_bytes": n.size,
            "source": n.source,
            "received_at": now,
            "batch_id": None,
            "emitted_at": None,
            **sent,
        }
        for n in notices
    }
    table = UploadNotice.__table__
    stmt = _insert(session, table).on_conflict_do_nothing(index_elements=["bucket", "key", "object_version"])
    stmt = stmt.returning(table.c.id)
    return len(session.execute(stmt, list(rows.values())).all())


@dataclass(frozen=True)
class UploadBatch:
    """The objects one upload event announces; `batch_id` doubles as the event's id, so a
    batch sent twice (a crash between sending and marking it sent) is one event to Prefect."""

    batch_id: str
    objects: tuple[ObjectNotice, ...]


def pending_due(session: Session, max_objects: int, max_wait_s: float, now: dt.datetime) -> bool:
    """A batch is due when `max_objects` notices wait, or the oldest has waited `max_wait_s`."""
    waiting = sa.select(sa.func.count(), sa.func.min(UploadNotice.received_at)).where(
        UploadNotice.batch_id.is_(None)
    )
    count, oldest = session.execute(waiting).one()
    if not count:
        return False
    if count >= max_objects:
        return True
    if oldest.tzinfo is None:  # SQLite aggregates bypass the column type
        oldest = oldest.replace(tzinfo=dt.UTC)
    return bool((now - oldest).total_seconds() >= max_wait_s)


def claim_batch(session: Session, max_objects: int) -> str | None:
    """Give the oldest waiting notices (at most `max_objects`) a new batch id; None if none wait.
    A concurrent claimer cannot take the same rows: the UPDATE re-checks `batch_id IS NULL`."""
    ids = (
        session.execute(
            sa.select(UploadNotice.id)
            .where(UploadNotice.batch_id.is_(None))
            .order_by(UploadNotice.id)
            .limit(max_objects)
        )
        .scalars()
        .all()
    )
    if not ids:
        return None
    batch_id = str(uuid.uuid4())
    session.execute(
        sa.update(UploadNotice)
        .where(UploadNotice.id.in_(ids), UploadNotice.batch_id.is_(None))
        .values(batch_id=batch_id)
    )
    return batch_id


def unsent_batches(session: Session) -> list[UploadBatch]:
    """Claimed batches not yet marked sent (just claimed, or a crash before marking)."""
    rows = session.execute(
        sa.select(UploadNotice)
        .where(UploadNotice.batch_id.is_not(None), UploadNotice.emitted_at.is_(None))
        .order_by(UploadNotice.id)
    ).scalars()
    grouped: dict[str, list[ObjectNotice]] = {}
    for row in rows:
        assert row.batch_id is not None
        grouped.setdefault(row.batch_id, []).append(
            ObjectNotice(
                bucket=row.bucket,
                key=row.key,
                version_id=row.version_id,
                etag=row.etag,
                size=row.size_bytes,
                source=row.source,
            )
        )
    return [UploadBatch(batch_id, tuple(objs)) for batch_id, objs in grouped.items()]


def mark_sent(session: Session, batch_id: str, now: dt.datetime | None = None) -> None:
    session.execute(
        sa.update(UploadNotice)
        .where(UploadNotice.batch_id == batch_id, UploadNotice.emitted_at.is_(None))
        .values(emitted_at=now or utcnow())
    )


def count_unannounced(session: Session, object_versions: Iterable[ObjectVersion]) -> int:
    """How many of these object versions (what the nightly listing found) no webhook or
    watcher notice announced: the files that arrived without an event."""
    wanted = {(o.bucket, o.key, object_version(o.version_id, o.etag)) for o in object_versions}
    if not wanted:
        return 0
    announced: set[tuple[str, str, str]] = set()
    by_bucket: dict[str, list[str]] = {}
    for bucket, key, _ in wanted:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 500):  # bounded IN lists
            chunk = keys[start : start + 500]
            rows = session.execute(
                sa.select(UploadNotice.bucket, UploadNotice.key, UploadNotice.object_version).where(
                    UploadNotice.bucket == bucket,
                    UploadNotice.key.in_(chunk),
                    UploadNotice.source != BASELINE,
                )
            ).all()
            announced.update((b, k, v) for b, k, v in rows)
    return len(wanted - announced)


# --------------------------------------------------------------------------- watcher cursor


def cursor(session: Session, source: str) -> dt.datetime | None:
    row = session.get(WatchCursor, source)
    return row.high_water if row is not None else None


def has_cursor(session: Session, source: str) -> bool:
    return session.get(WatchCursor, source) is not None


def move_cursor(session: Session, source: str, high_water: dt.datetime | None) -> None:
    """Record the newest LastModified looked at (never moves backwards)."""
    row = session.get(WatchCursor, source)
    if row is None:
        session.add(WatchCursor(source=source, high_water=high_water, updated_at=utcnow()))
        return
    if high_water is not None and (row.high_water is None or high_water > row.high_water):
        row.high_water = high_water
    row.updated_at = utcnow()
