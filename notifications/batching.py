"""Turning recorded notices into a bounded number of upload events.

Notices wait in the database; a batch goes out when `max_objects` of them wait or the oldest
has waited `max_wait_s` seconds. A burst of 1,000 uploads in a minute is therefore about
1,000 / `max_objects` events (and flow runs), not 1,000. Batches are claimed in the database
before they are sent and marked sent after, so a crash in between re-sends the same batch
with the same id on the next tick: the event server sees one event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from notifications import ledger
from notifications.ledger import UploadBatch
from results_store.db import Store

log = logging.getLogger(__name__)

Emit = Callable[[UploadBatch], None]


class Dispatcher:
    def __init__(self, store: Store, emit: Emit, *, max_objects: int, max_wait_s: float) -> None:
        if max_objects < 1:
            raise ValueError("max_objects must be at least 1")
        self.store = store
        self.emit = emit
        self.max_objects = max_objects
        self.max_wait_s = max_wait_s

    def tick(self, *, flush: bool = False) -> int:
        """Send what is due (and anything claimed but not yet sent); returns batches sent.
        `flush` sends every waiting notice now (on shutdown)."""
        wait_s = 0.0 if flush else self.max_wait_s
        with self.store.session_scope() as s:
            while ledger.pending_due(s, self.max_objects, wait_s, ledger.utcnow()):
                ledger.claim_batch(s, self.max_objects)
        with self.store.session_scope() as s:
            batches = ledger.unsent_batches(s)
        sent, failure = 0, None
        for batch in batches:
            try:
                self.emit(batch)
            except Exception as exc:  # noqa: BLE001 - left unsent for the next tick; the others still go
                failure = failure or exc
                continue
            with self.store.session_scope() as s:
                ledger.mark_sent(s, batch.batch_id)
            sent += 1
            log.info("upload event %s sent for %d object(s)", batch.batch_id, len(batch.objects))
        if failure is not None:
            raise failure
        return sent
