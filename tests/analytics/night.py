"""One small night in a migrated SQLite database: two escalated calls (one split), a calm one,
a rejected recording."""

from __future__ import annotations

from pathlib import Path

from analytics import compute_and_store
from results_store import db
from results_store import repository as repo
from results_store.models import RecordingStatus
from results_store.records import RecordingIn
from tests.analytics.calls import CALM_CALL, NEUTRAL_THEN_ANGRY, PROCESSED, prosody, store_call
from valence_pipeline.settings import Settings

DAY = PROCESSED.date().isoformat()


def build_night(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'night.db'}"
    db.upgrade(url)
    settings = Settings(_env_file=None)
    store = db.Store(url)
    utterances = prosody(0.6, [(0.0, 20.0, {"Calmness": 0.7, "Anger": 0.1}), (40.0, 60.0, {"Anger": 0.9})])
    try:
        with store.session_scope() as s:
            ids = [
                store_call(s, "calls/2026-11-21/sales/ann/c-1.wav", {None: NEUTRAL_THEN_ANGRY}, n=1),
                store_call(
                    s, "calls/2026-11-21/billing/bob/c-2.wav", {0: CALM_CALL, 1: NEUTRAL_THEN_ANGRY},
                    {0: utterances, 1: utterances}, n=2, channels=2,
                ),
                store_call(s, "calls/2026-11-21/sales/ann/c-3.wav", {None: CALM_CALL}, n=3),
            ]  # fmt: skip
            for rid in ids:
                compute_and_store(s, rid, settings)
            bad = repo.upsert_recording(
                s,
                RecordingIn(bucket="calls", key="calls/2026-11-21/sales/ann/hangup.wav", etag='"9"', size_bytes=9,
                            version_id="v9", sha256=None, content_type=None, duration_s=None, sample_rate=None,
                            channels=None),
            )  # fmt: skip
            repo.set_recording_status(
                s, bad.id, RecordingStatus.REJECTED, reason="too_short: 2.0 s < 4.0 s", at=PROCESSED
            )
    finally:
        store.dispose()
    return url
