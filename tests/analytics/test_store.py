"""compute_and_store on calls stored as the pipeline stores them, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from analytics import calls_on, compute_and_store, daily_rollup, dataset_records, failures_on
from analytics.metrics import ranked
from results_store import repository as repo
from results_store.models import CALL_ANALYTICS_TABLE, CallAnalyticsRow, JobStatus, RecordingStatus
from results_store.models import ProviderJob as JobRow
from results_store.records import RecordingIn
from tests.analytics.calls import CALM_CALL, NEUTRAL_THEN_ANGRY, PROCESSED, prosody, store_call, timeline
from valence_pipeline.settings import Settings

DAY = PROCESSED.date()
SETTINGS = Settings(_env_file=None, negative_emotions=["angry", "sad"], escalation_margin=0.2)


def test_an_escalating_call_is_flagged_and_a_calm_one_is_not(store: Any) -> None:
    with store.session_scope() as s:
        angry = store_call(s, "calls/2026-11-21/sales/ann/c-1.wav", {None: NEUTRAL_THEN_ANGRY}, n=1)
        calm = store_call(s, "calls/2026-11-21/sales/bob/c-2.wav", {None: CALM_CALL}, n=2)
        compute_and_store(s, angry, SETTINGS)
        compute_and_store(s, calm, SETTINGS)
    with store.session_scope() as s:
        calls = {c.uri.rsplit("/", 1)[1]: c for c in calls_on(s, DAY)}
        assert calls["c-1.wav"].call.escalated and not calls["c-2.wav"].call.escalated
        angry_row = calls["c-1.wav"].call
        assert (angry_row.first_third_emotion, angry_row.last_third_emotion) == ("neutral", "angry")
        assert angry_row.dimensions == {
            "date": "2026-11-21",
            "queue": "sales",
            "agent": "ann",
            "call_id": "c-1",
        }
        assert angry_row.model == "4emotions"  # learned from the comprehensive predictions
        assert angry_row.processing_date == DAY
        assert [c.uri.rsplit("/", 1)[1] for c in calls_on(s, DAY, escalated=True)] == ["c-1.wav"]
        assert [c.uri.rsplit("/", 1)[1] for c in calls_on(s, DAY, agent="bob")] == ["c-2.wav"]
        assert calls_on(s, DAY, queue="billing") == []
        assert calls_on(s, DAY + dt.timedelta(days=1)) == []


def test_split_channels_get_their_roles_and_their_own_figures(store: Any) -> None:
    agent = timeline(["neutral"] * 12)
    customer = timeline(["neutral"] * 8 + ["angry"] * 4)
    result = prosody(0.7, [(0.0, 9.0, {"Anger": 0.9, "Joy": 0.1}), (9.0, 10.0, {"Anger": 0.1, "Joy": 0.9})])
    with store.session_scope() as s:
        rid = store_call(
            s, "calls/2026-11-21/sales/ann/c-3.wav", {0: agent, 1: customer}, {1: result}, channels=2
        )
        rows = compute_and_store(s, rid, SETTINGS)
        assert [(r.scope, r.channel, r.role, r.escalated) for r in rows] == [
            ("call", None, None, True),
            ("channel:0", 0, "agent", False),
            ("channel:1", 1, "customer", True),
        ]
        customer_row = rows[2]
        assert customer_row.frustration == pytest.approx(0.7)
        assert ranked(customer_row.top_expressions) == ["Anger", "Joy"]
        assert rows[1].frustration is None  # no Valsea job for the agent's channel
        assert rows[0].analysed_s == 60.0 and rows[0].confident_s == 120.0
        (summary,) = calls_on(s, DAY)
        assert summary.escalated_roles == ["customer"]


def test_recomputing_replaces_rows_and_keeps_metadata_dimensions(store: Any) -> None:
    with store.session_scope() as s:
        rid = store_call(s, "calls/2026-11-21/sales/ann/c-4.wav", {None: CALM_CALL})
        first = compute_and_store(s, rid, SETTINGS, metadata={"agent": "carol", "site": "leeds"})
        assert first[0].dimensions["agent"] == "carol"
        again = compute_and_store(s, rid, SETTINGS)  # no metadata this time
        assert [r.id for r in again] == [r.id for r in first]
        assert again[0].dimensions == {
            "date": "2026-11-21",
            "queue": "sales",
            "agent": "carol",
            "call_id": "c-4",
            "site": "leeds",
        }
        assert s.execute(sa.select(sa.func.count()).select_from(CallAnalyticsRow)).scalar_one() == 1


def test_daily_rollup_by_queue_and_agent(store: Any) -> None:
    with store.session_scope() as s:
        ids = [
            store_call(s, "calls/2026-11-21/sales/ann/a.wav", {None: NEUTRAL_THEN_ANGRY}, n=1),
            store_call(s, "calls/2026-11-21/sales/ann/b.wav", {None: CALM_CALL}, n=2),
            store_call(s, "calls/2026-11-21/billing/bob/c.wav", {None: NEUTRAL_THEN_ANGRY}, n=3),
            store_call(s, "elsewhere/d.wav", {None: CALM_CALL}, n=4),
        ]
        for rid in ids:
            compute_and_store(s, rid, SETTINGS)
    with store.session_scope() as s:
        rollup = {tuple(r.dimensions.values()): r for r in daily_rollup(s, DAY)}
        assert sorted(rollup) == [("-", "-"), ("billing", "bob"), ("sales", "ann")]
        ann = rollup["sales", "ann"]
        assert (ann.calls, ann.escalated, ann.analysed_s) == (2, 1, 120.0)
        assert ann.escalated_share == 0.5
        assert ann.emotion_shares["angry"] == pytest.approx(20 / 120)
        by_queue = daily_rollup(s, DAY, by=("queue",))
        assert [(r.dimensions, r.calls) for r in by_queue] == [
            ({"queue": "-"}, 1),
            ({"queue": "billing"}, 1),
            ({"queue": "sales"}, 2),
        ]


def test_failures_of_the_day_say_why(store: Any) -> None:
    with store.session_scope() as s:
        ref = repo.upsert_recording(
            s,
            RecordingIn(bucket="calls", key="x/bad.wav", etag='"e"', size_bytes=10, version_id="v1", sha256=None,
                        content_type=None, duration_s=None, sample_rate=None, channels=None),
        )  # fmt: skip
        repo.set_recording_status(
            s, ref.id, RecordingStatus.REJECTED, reason="too_short: 2.0 s", at=PROCESSED
        )
    with store.session_scope() as s:
        (failure,) = failures_on(s, DAY)
        assert (failure.uri, failure.status, failure.reason) == (
            "s3://calls/x/bad.wav",
            "rejected",
            "too_short: 2.0 s",
        )
        assert failures_on(s, DAY - dt.timedelta(days=1)) == []


def test_dataset_records_match_the_arrow_schema(store: Any) -> None:
    import pyarrow as pa

    with store.session_scope() as s:
        rid = store_call(
            s, "calls/2026-11-21/sales/ann/c-5.wav", {0: CALM_CALL, 1: NEUTRAL_THEN_ANGRY}, channels=2
        )
        compute_and_store(s, rid, SETTINGS)
        records = dataset_records(s, [rid])
    assert [r.scope for r in records] == ["call", "channel:0", "channel:1"]
    assert records[0].source_uri == "s3://calls/calls/2026-11-21/sales/ann/c-5.wav"
    columns = {f.name for f in CALL_ANALYTICS_TABLE.schema} - {"run_id"}
    rows = [vars_of(r) | {"run_id": "r"} for r in records]  # the plain values a table writer gets
    assert set(rows[0]) == columns | {"run_id"}
    table = pa.Table.from_pylist(rows, schema=CALL_ANALYTICS_TABLE.schema)
    assert table.num_rows == 3 and table.column("escalated").to_pylist() == [True, False, True]
    assert dict(table.column("dimensions")[0].as_py())["agent"] == "ann"
    assert dict(table.column("emotion_shares")[2].as_py()) == {
        "angry": pytest.approx(1 / 3),
        "neutral": pytest.approx(2 / 3),
    }


def vars_of(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_a_recording_without_results_gets_no_figures(store: Any) -> None:
    with store.session_scope() as s:
        rid = store_call(s, "calls/2026-11-21/sales/ann/c-6.wav", {None: CALM_CALL})
        assert len(compute_and_store(s, rid, SETTINGS)) == 1
        s.execute(sa.update(JobRow).where(JobRow.recording_id == rid).values(status=JobStatus.FAILED))
        assert compute_and_store(s, rid, SETTINGS) == []
        assert calls_on(s, DAY) == []
