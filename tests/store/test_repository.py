"""Repository behaviour on SQLite and PostgreSQL: idempotent upserts, statuses, reuse, lineage."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from results_store import repository as repo
from results_store.db import Store
from results_store.models import (
    EmotionSegmentRow,
    JobStatus,
    Lineage,
    LineageKind,
    OutputKind,
    PipelineRun,
    ProsodySummaryRow,
    ProsodyUtteranceRow,
    Provider,
    ProviderJob,
    Recording,
    RecordingStatus,
    RunStatus,
)
from results_store.records import JobIn, LineageIn, RecordingIn

from .factories import RUN_ID, count, process, prosody, recording_in, start_run, timeline


def test_upserting_recordings_twice_stores_each_version_once(store: Store) -> None:
    with store.session_scope() as s:
        first = repo.upsert_recordings(s, [recording_in(i) for i in range(3)])
    with store.session_scope() as s:
        again = repo.upsert_recordings(s, [recording_in(i) for i in (2, 0, 1, 3)])
        assert count(s, Recording) == 4
    assert [r.id for r in again[:3]] == [first[2].id, first[0].id, first[1].id]
    assert len({r.id for r in again}) == 4


def test_an_upsert_statement_is_built_once_per_shape(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built per call, `stmt.excluded` made an alias of the table with a proxy per column each
    time: a night of 200 recordings left ~23,000 of them as cyclic garbage."""
    built: list[tuple[Any, ...]] = []
    real = repo._upsert_statement

    def counting(*shape: Any) -> Any:
        built.append(shape)
        return real(*shape)

    monkeypatch.setattr(repo, "_upsert_statement", counting)
    monkeypatch.setattr(repo, "_UPSERTS", {})
    for i in range(3):
        with store.session_scope() as s:
            repo.upsert_recordings(s, [recording_in(i), recording_in(i + 10)])
    assert len(built) == 1
    with store.session_scope() as s:
        assert count(s, Recording) == 6


def test_relisting_keeps_progress_and_known_metadata(store: Store) -> None:
    rec = recording_in(1)
    with store.session_scope() as s:
        ref = repo.upsert_recording(s, rec)
        repo.set_recording_status(s, ref.id, RecordingStatus.COMPLETED)
    relisted = RecordingIn(
        bucket=rec.bucket, key=rec.key, etag=rec.etag, size_bytes=rec.size_bytes, version_id=rec.version_id
    )
    with store.session_scope() as s:
        again = repo.upsert_recording(s, relisted)
        view = repo.get_recording(s, ref.id)
    assert again.id == ref.id
    assert again.status is RecordingStatus.COMPLETED
    assert view.sha256 == rec.sha256 and view.duration_s == rec.duration_s
    assert view.processed_at is not None and view.processed_at.tzinfo is not None


def test_unversioned_objects_are_told_apart_by_etag(store: Store) -> None:
    base = dict(bucket="calls", key="a.wav", size_bytes=10)
    with store.session_scope() as s:
        a = repo.upsert_recording(s, RecordingIn(etag='"abc"', **base))  # type: ignore[arg-type]
        a_null = repo.upsert_recording(s, RecordingIn(etag="abc", version_id="null", **base))  # type: ignore[arg-type]
        b = repo.upsert_recording(s, RecordingIn(etag='"def"', **base))  # type: ignore[arg-type]
        assert count(s, Recording) == 2
    assert a.id == a_null.id and a.object_version == "etag:abc"
    assert b.id != a.id


def test_rejected_and_failed_need_a_reason_in_code_and_in_the_schema(store: Store) -> None:
    with store.session_scope() as s:
        ref = repo.upsert_recording(s, recording_in(1))
    with store.session_scope() as s, pytest.raises(ValueError, match="needs a reason"):
        repo.set_recording_status(s, ref.id, RecordingStatus.REJECTED)
    with pytest.raises(IntegrityError), store.session_scope() as s:
        s.execute(
            sa.update(Recording)
            .where(Recording.id == ref.id)
            .values(status=RecordingStatus.FAILED, reason=None)
        )
    with store.session_scope() as s:
        repo.set_recording_status(s, ref.id, RecordingStatus.REJECTED, reason="audio too short (2.1 s < 4 s)")
        assert repo.get_recording(s, ref.id).reason == "audio too short (2.1 s < 4 s)"


def test_is_finished_only_for_completed_or_rejected_versions(store: Store) -> None:
    rec = recording_in(7)
    with store.session_scope() as s:
        assert not repo.is_finished(s, rec.bucket, rec.key, version_id=rec.version_id, etag=rec.etag)
        ref = repo.upsert_recording(s, rec)
        repo.set_recording_status(s, ref.id, RecordingStatus.FAILED, reason="provider error")
        assert not repo.is_finished(s, rec.bucket, rec.key, version_id=rec.version_id, etag=rec.etag)
        repo.set_recording_status(s, ref.id, RecordingStatus.COMPLETED)
        assert repo.is_finished(s, rec.bucket, rec.key, version_id=rec.version_id, etag=rec.etag)
        assert not repo.is_finished(s, rec.bucket, rec.key, version_id="another-version", etag=rec.etag)


def test_provider_job_upsert_is_keyed_on_provider_and_external_id(store: Store) -> None:
    with store.session_scope() as s:
        start_run(s)
        start_run(s, "second-run")
        ref = repo.upsert_recording(s, recording_in(1))
        job = JobIn(ref.id, Provider.VALENCE, "4emotions", "req-1", flow_run_id=RUN_ID, task_run_id="task-a")
        first = repo.upsert_provider_job(s, job)
    with store.session_scope() as s:
        again = repo.upsert_provider_job(
            s,
            JobIn(
                ref.id, Provider.VALENCE, "4emotions", "req-1", status=JobStatus.PROCESSING, attempts=2,
                flow_run_id="second-run", task_run_id="task-b",
            ),
        )  # fmt: skip
        other_provider = repo.upsert_provider_job(
            s, JobIn(ref.id, Provider.VALSEA, "valsea-prosody", "req-1")
        )
        row = s.get(ProviderJob, first)
        assert count(s, ProviderJob) == 2
    assert again == first and other_provider != first
    assert row is not None
    assert (row.status, row.attempts) == (JobStatus.PROCESSING, 2)
    assert (row.flow_run_id, row.task_run_id) == (RUN_ID, "task-a")  # who submitted it is kept


def test_resumable_job_skips_failed_and_matches_channel(store: Store) -> None:
    with store.session_scope() as s:
        ref = repo.upsert_recording(s, recording_in(1))
        failed = repo.upsert_provider_job(
            s, JobIn(ref.id, Provider.VALSEA, "valsea-prosody", "j-1", channel=0)
        )
        repo.update_job(s, failed, status=JobStatus.FAILED, error_code="500", error_message="boom")
        assert repo.find_resumable_job(s, ref.id, Provider.VALSEA, model="valsea-prosody", channel=0) is None
        live = repo.upsert_provider_job(s, JobIn(ref.id, Provider.VALSEA, "valsea-prosody", "j-2", channel=0))
        found = repo.find_resumable_job(s, ref.id, Provider.VALSEA, model="valsea-prosody", channel=0)
        assert found is not None and (found.id, found.external_id) == (live, "j-2")
        assert repo.find_resumable_job(s, ref.id, Provider.VALSEA, model="valsea-prosody", channel=1) is None
        assert repo.find_resumable_job(s, ref.id, Provider.VALSEA, model="valsea-prosody") is None


def test_saving_results_twice_stores_them_once(store: Store) -> None:
    with store.session_scope() as s:
        start_run(s)
        ref = repo.upsert_recording(s, recording_in(1))
        done = process(s, ref, segments=6, utterances=3)
    for _ in range(2):
        with store.session_scope() as s:
            repo.save_emotion_segments(s, done.valence_job, timeline(6, seed=ref.id), flow_run_id=RUN_ID)
            repo.save_prosody_result(s, done.valsea_job, prosody("x", 3, seed=ref.id), flow_run_id=RUN_ID)
    with store.session_scope() as s:
        assert count(s, EmotionSegmentRow) == 6
        assert count(s, ProsodyUtteranceRow) == 3
        assert count(s, ProsodySummaryRow) == 1
        assert count(s, Lineage) == 3  # one per DB output: segments, summary, utterances
        # A shorter re-fetched result leaves exactly that result.
        repo.save_emotion_segments(s, done.valence_job, timeline(2), flow_run_id=RUN_ID)
        assert count(s, EmotionSegmentRow) == 2
        row = (
            s.execute(sa.select(ProsodyUtteranceRow).order_by(ProsodyUtteranceRow.utterance_index))
            .scalars()
            .first()
        )
        assert row is not None and len(row.expressions) == 48


def test_segments_are_written_in_bulk_not_row_by_row(store: Store) -> None:
    with store.session_scope() as s:
        start_run(s)
        ref = repo.upsert_recording(s, recording_in(1))
        job = repo.upsert_provider_job(s, JobIn(ref.id, Provider.VALENCE, "4emotions", "req-bulk"))
    statements: list[str] = []

    def count_statements(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EMOTION_SEGMENTS"):
            statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count_statements)
    try:
        with store.session_scope() as s:
            repo.save_emotion_segments(s, job, timeline(3000), flow_run_id=RUN_ID)
            assert count(s, EmotionSegmentRow) == 3000
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count_statements)
    assert 1 <= len(statements) <= 10


def test_stored_errors_are_redacted_and_signed_urls_refused(store: Store) -> None:
    presigned = "https://bucket.s3.amazonaws.com/x?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef"
    with store.session_scope() as s:
        start_run(s)
        ref = repo.upsert_recording(s, recording_in(1))
        job = repo.upsert_provider_job(s, JobIn(ref.id, Provider.VALENCE, "4emotions", "req-1"))
        repo.update_job(
            s, job, status=JobStatus.FAILED, error_code="upload", error_message=f"PUT {presigned} 403"
        )
        row = s.get(ProviderJob, job)
        assert row is not None and row.error_message is not None
        assert "deadbeef" not in row.error_message and "AKIA123" not in row.error_message
        assert "[REDACTED]" in row.error_message
        entry = LineageIn(LineageKind.PRODUCED, ref.id, OutputKind.PARQUET, "emotion_segments", presigned)
        with pytest.raises(ValueError, match="non-s3 URL"):
            repo.add_lineage(s, [entry])


def test_runs_start_and_finish_idempotently(store: Store) -> None:
    for _ in range(2):
        with store.session_scope() as s:
            start_run(s)
    with store.session_scope() as s:
        repo.finish_run(s, RUN_ID, status=RunStatus.COMPLETED, counts={"completed": 3, "rejected": 1})
        run = s.get(PipelineRun, RUN_ID)
        assert count(s, PipelineRun) == 1
    assert run is not None and run.status is RunStatus.COMPLETED
    assert run.counts == {"completed": 3, "rejected": 1}
    assert run.ended_at is not None and run.ended_at >= run.started_at


def test_same_content_under_another_key_reuses_finished_results(store: Store) -> None:
    original = recording_in(1)
    copy = recording_in(2, sha256=original.sha256, key="copies/call-0001.wav")
    with store.session_scope() as s:
        start_run(s)
        a = repo.upsert_recording(s, original)
        process(s, a, segments=5, utterances=2)
        b = repo.upsert_recording(s, copy)
        assert original.sha256 is not None
        source = repo.find_completed_by_sha256(s, original.sha256, exclude_recording_id=b.id)
        assert source is not None and source.id == a.id
        jobs_before = count(s, ProviderJob)
        linked = repo.record_reuse(s, recording_id=b.id, source_recording_id=a.id, flow_run_id=RUN_ID)
        assert linked == 3 and count(s, ProviderJob) == jobs_before
        # The copy is not offered as a reuse source itself: it has no jobs of its own.
        again = repo.find_completed_by_sha256(s, original.sha256, exclude_recording_id=a.id)
        assert again is None
    with store.session_scope() as s:
        assert repo.get_recording(s, b.id).status is RecordingStatus.COMPLETED
        rows = repo.dataset_rows(s, [b.id])
        timeline_b = repo.timeline_for_uri(s, f"s3://calls/{copy.key}")
    assert {r.recording_id for r in rows.emotion_segments} == {b.id}
    assert len(rows.emotion_segments) == 5 and len(rows.prosody_utterances) == 2
    assert {r.source_uri for r in rows.emotion_segments} == {f"s3://calls/{copy.key}"}
    assert timeline_b is not None and timeline_b.reused_from is not None and timeline_b.reused_from.id == a.id
    assert len(timeline_b.segments) == 5


def test_dataset_rows_take_the_newest_completed_job(store: Store) -> None:
    with store.session_scope() as s:
        start_run(s)
        ref = repo.upsert_recording(s, recording_in(1))
        process(s, ref, segments=3, attempt=0)
    with store.session_scope() as s:
        newer = process(s, ref, segments=5, attempt=1)
    with store.session_scope() as s:
        rows = repo.dataset_rows(s, [ref.id])
    assert {r.provider_job_id for r in rows.emotion_segments} == {newer.valence_job}
    assert [r.segment_index for r in rows.emotion_segments] == list(range(5))
    assert {r.provider_job_id for r in rows.prosody_summaries} == {newer.valsea_job}
    assert len(rows.recordings) == 1 and rows.recordings[0].status == "completed"


def test_timestamps_come_back_timezone_aware(store: Store) -> None:
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with store.session_scope() as s:
        ref = repo.upsert_recording(s, recording_in(1))
        repo.set_recording_status(s, ref.id, RecordingStatus.COMPLETED, at=when)
    with store.session_scope() as s:
        view = repo.get_recording(s, ref.id)
    assert view.processed_at == when and view.processed_at.tzinfo is not None
    assert view.processed_at.utcoffset() == dt.timedelta(0)


def test_large_batches_of_results_upsert_once_and_update_in_place(store: Store) -> None:
    """Above `COPY_MIN_ROWS` PostgreSQL takes the COPY path; both backends must agree."""
    with store.session_scope() as s:
        start_run(s)
        refs = repo.upsert_recordings(s, [recording_in(n) for n in range(4)])
        valence = [
            repo.upsert_provider_job(s, JobIn(r.id, Provider.VALENCE, "4emotions", f"req-{r.id}"))
            for r in refs
        ]
        valsea = [
            repo.upsert_provider_job(s, JobIn(r.id, Provider.VALSEA, "valsea-prosody", f"j-{r.id}"))
            for r in refs
        ]
    per_job = repo.COPY_MIN_ROWS // 2
    for seed in (1, 2):  # the second write changes every value
        with store.session_scope() as s:
            written = repo.save_timelines(
                s, {job: timeline(per_job, seed=seed) for job in valence}, flow_run_id=RUN_ID
            )
            utterances = repo.save_prosody_results(
                s, {job: prosody(f"j-{job}", per_job, seed=seed) for job in valsea}, flow_run_id=RUN_ID
            )
            # A second batch in the same transaction reuses the staging table.
            repo.save_timelines(s, {valence[0]: timeline(per_job, seed=seed)}, flow_run_id=RUN_ID)
        assert written == utterances == 4 * per_job
    with store.session_scope() as s:
        assert count(s, EmotionSegmentRow) == 4 * per_job
        assert count(s, ProsodyUtteranceRow) == 4 * per_job
        assert count(s, Lineage) == 4 * 3
        stored = s.execute(
            sa.select(EmotionSegmentRow)
            .where(EmotionSegmentRow.job_id == valence[2])
            .order_by(EmotionSegmentRow.segment_index)
        ).scalars()
        assert [(r.emotion, r.confidence, r.all_predictions) for r in stored] == [
            (seg.emotion, seg.confidence, seg.all_predictions) for seg in timeline(per_job, seed=2)
        ]
        utterance = s.execute(
            sa.select(ProsodyUtteranceRow).where(
                ProsodyUtteranceRow.job_id == valsea[1], ProsodyUtteranceRow.utterance_index == 3
            )
        ).scalar_one()
        assert utterance.expressions == prosody("x", per_job, seed=2).raw_predictions[3].expressions
    with store.session_scope() as s, pytest.raises(LookupError, match="no provider job"):
        repo.save_timelines(s, {999_999: timeline(1)}, flow_run_id=RUN_ID)


def test_dataset_rows_are_the_same_when_read_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.session_scope() as s:
        start_run(s)
        refs = repo.upsert_recordings(s, [recording_in(n) for n in range(5)])
        for ref in refs:
            process(s, ref, segments=2, utterances=1)
    ids = [r.id for r in reversed(refs)]
    with store.session_scope() as s:
        whole = repo.dataset_rows(s, ids)
    monkeypatch.setattr(repo, "EXPORT_CHUNK", 2)
    with store.session_scope() as s:
        chunked = repo.dataset_rows(s, ids)
    assert chunked == whole
    assert [r.recording_id for r in whole.recordings] == sorted(ids)
    assert len(whole.emotion_segments) == 10 and len(whole.prosody_summaries) == 5


def test_json_keys_read_back_are_one_copy_held_for_the_process() -> None:
    """Names like "Empathic Pain" were interned only while a row held them: a long night
    interned and dropped them thousands of times, until CPython's table of interned strings
    doubled in size. Read back, every copy of a key is the same object, held for good."""
    from results_store.db import load_json
    from valence_client.models import SHARED_NAMES as _KEYS

    first = load_json('{"Empathic Pain": 0.5, "Surprise (positive)": 0.25}')
    second = load_json(b'{"Surprise (positive)": 0.75, "Empathic Pain": 0.1}')
    assert first == {"Empathic Pain": 0.5, "Surprise (positive)": 0.25}
    assert [k for k in first] == [k for k in second][::-1]
    assert all(any(k is held for held in _KEYS) for k in (*first, *second))
    same = {k: k for k in second}
    assert all(same[k] is k for k in first)
