"""Watching a store that sends no notifications (SeaweedFS, or an S3 without events set up).

Each scan lists the latest version of every object under the prefix and records a notice for
each audio object version not noticed before. The cursor (Dagster's S3 sensor pattern) is the
newest LastModified seen, kept in the results database; unlike a key-and-time cursor, object
versions are compared, so a rewritten key is a new version, and a window before the cursor is
re-checked so an upload that was listed late is not missed. Exactly once comes from the
notices' natural key, not from the cursor: a scan repeated after a crash records nothing twice.

The first scan of a prefix records the objects already there as a baseline that is never
sent (they are the nightly sweep's, and do not count as announced), unless `announce_existing`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from notifications import ledger
from notifications.messages import ObjectNotice
from results_store.db import Store
from valence_pipeline.s3 import list_latest_versions, parse_s3_uri

log = logging.getLogger(__name__)


@dataclass
class Watcher:
    store: Store
    s3: Any
    source: str
    suffixes: list[str]
    lookback_s: float = 900.0
    announce_existing: bool = False

    def scan(self) -> int:
        """One listing; returns how many object versions were newly announced."""
        bucket, prefix = parse_s3_uri(self.source)
        with self.store.session_scope() as s:
            first = not ledger.has_cursor(s, self.source)
            high_water = ledger.cursor(s, self.source)
        since = None if high_water is None else high_water - dt.timedelta(seconds=self.lookback_s)
        newest = high_water
        found: list[ObjectNotice] = []
        for obj in list_latest_versions(self.s3, bucket, prefix):
            if not obj.key.lower().endswith(tuple(x.lower() for x in self.suffixes)):
                continue
            if newest is None or obj.last_modified > newest:
                newest = obj.last_modified
            if since is not None and obj.last_modified < since:
                continue
            found.append(
                ObjectNotice(
                    bucket=obj.bucket,
                    key=obj.key,
                    version_id=None if obj.version_id == "null" else obj.version_id,
                    etag=obj.etag,
                    size=obj.size,
                    source="watch",
                )
            )
        baseline = first and not self.announce_existing
        with self.store.session_scope() as s:  # notices and cursor move together
            new = ledger.record_notices(s, found, baseline=baseline)
            ledger.move_cursor(s, self.source, newest)
        if baseline:
            log.info("%s: first scan, %d existing object(s) left to the nightly run", self.source, new)
            return 0
        if new:
            log.info("%s: %d new object version(s)", self.source, new)
        return new
