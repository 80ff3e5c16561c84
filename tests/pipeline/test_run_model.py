"""The run model: one bad recording never fails the night, steps are pipelined rather than
phased, twins are paid once, and the database (not the process) carries a run's facts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure, paid, query, statuses


def night(source: str) -> Any:
    """The nightly flow's final state (Completed, or Failed when files failed)."""
    from flows.ingest import nightly_ingest
    from valence_pipeline.runtime import reset_runtime

    reset_runtime()
    return nightly_ingest(source=source, trigger="manual", return_state=True)


@pytest.mark.usefixtures("prefect_harness")
def test_a_recording_whose_step_always_raises_fails_alone_and_the_run_says_so(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    samples = tuple(SampleRecording(f"in/r{i}.wav", 15 + i) for i in range(5))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset",
        VALENCE_PIPELINE_STEP_ATTEMPTS="3", VALENCE_PIPELINE_STEP_RETRY_DELAY_S="0.2",
    )  # fmt: skip
    import valence_pipeline.engine as engine

    real = engine.open_payload
    tries: list[str] = []

    def flaky(s3: Any, obj: Any, info: Any, provider: Any, channel: Any = None) -> Any:
        if obj.key == "in/r2.wav":
            tries.append(provider)
            raise ConnectionResetError("connection reset by peer (injected)")
        return real(s3, obj, info, provider, channel)

    monkeypatch.setattr(engine, "open_payload", flaky)
    state = night(f"s3://{bucket}/in/")

    assert state.is_failed()
    assert state.message == "1 of 5 files failed (4 completed, 0 rejected)"
    final = statuses(database_url)
    status, reason = final.pop("in/r2.wav")
    assert status == "failed"
    assert reason is not None and "retries_exhausted" in reason and "connection reset" in reason
    assert {s for s, _ in final.values()} == {"completed"}
    assert sorted(tries) == ["valence"] * 3 + ["valsea"] * 3  # each call tried step_attempts times
    result = state.result(raise_on_failure=False).result
    assert result["failed"] == 1 and result["completed"] == 4
    # Only the good four were paid for.
    assert paid(emu)["valsea_job"] == 4


@pytest.mark.usefixtures("prefect_harness")
def test_results_are_stored_while_other_recordings_are_still_being_sent(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    """Pipelined, not phased: the first results land before the last upload has gone."""
    samples = tuple(SampleRecording(f"in/p{i:02d}.wav", 12 + i % 3, samplerate=8000) for i in range(16))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch,
        seaweedfs,
        emu,
        database_url,
        tmp_path / "dataset",
        VALENCE_PIPELINE_MAX_CONCURRENT_FILES="1",
    )
    state = night(f"s3://{bucket}/in/")
    assert state.is_completed()
    [(first_done, last_sent)] = query(
        database_url, "select min(completed_at), max(submitted_at) from provider_jobs"
    )
    assert first_done < last_sent


@pytest.mark.usefixtures("prefect_harness")
def test_a_recording_failed_last_night_is_taken_on_again_and_waited_for(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    """The next night reads the recording as failed until its take-on resets it; it must
    still wait for the jobs it then submits, not end with them at the provider."""
    emu = make_emulator(time_scale=10.0)  # jobs take real seconds: the run must wait for them
    upload_samples(s3_client, bucket, (SampleRecording("in/again.wav", 20),))
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset",
        VALENCE_PIPELINE_STEP_ATTEMPTS="1",
    )  # fmt: skip
    import valence_pipeline.engine as engine

    real = engine.open_payload

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("connection reset by peer (injected)")

    monkeypatch.setattr(engine, "open_payload", broken)
    assert night(f"s3://{bucket}/in/").is_failed()
    assert statuses(database_url)["in/again.wav"][0] == "failed"

    monkeypatch.setattr(engine, "open_payload", real)
    real_take_on = engine.Engine._take_on

    def slow_take_on(self: Any, rid: int) -> None:
        time.sleep(1.0)  # the watch loop reads it as failed a few times first
        real_take_on(self, rid)

    monkeypatch.setattr(engine.Engine, "_take_on", slow_take_on)
    assert night(f"s3://{bucket}/in/").is_completed()
    assert statuses(database_url) == {"in/again.wav": ("completed", None)}


@pytest.mark.usefixtures("prefect_harness")
def test_a_worker_holds_only_the_recordings_in_flight_not_the_night(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    """Checks outrun slow sends; the backlog is fed only while few recordings have work here,
    and the watch loop reads only those fed and not done, never the whole night."""
    samples = tuple(SampleRecording(f"in/f{i:02d}.wav", 12, samplerate=8000) for i in range(24))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset",
        VALENCE_PIPELINE_CHECK_WORKERS="1", VALENCE_PIPELINE_MAX_CONCURRENT_FILES="1",
    )  # fmt: skip
    import valence_pipeline.bookkeeping as bookkeeping
    import valence_pipeline.engine as engine

    active: list[int] = []
    limits: list[int] = []
    real_send, real_statuses = engine.Engine._send, bookkeeping.PipelineStore.statuses

    def slow_send(self: Any, item: Any) -> None:
        active.append(len(self.active))
        limits.append(self.active_limit)
        time.sleep(0.1)  # a rate-limited provider: sends are the slow step
        real_send(self, item)

    asked: list[int] = []

    def statuses_asked(self: Any, ids: Any) -> Any:
        ids = list(ids)
        asked.append(len(ids))
        return real_statuses(self, ids)

    monkeypatch.setattr(engine.Engine, "_send", slow_send)
    monkeypatch.setattr(bookkeeping.PipelineStore, "statuses", statuses_asked)
    state = night(f"s3://{bucket}/in/")

    assert state.is_completed()
    assert {s for s, _ in statuses(database_url).values()} == {"completed"}
    assert set(limits) == {4 + 4 * 1 * 2}  # 4 take-ons (check_workers 1), 4 per sending thread
    assert max(active) <= limits[0] < len(samples)  # without the bound: all 24 (checks are quick)
    assert asked and max(asked) < len(samples)


@pytest.mark.usefixtures("prefect_harness")
def test_two_keys_with_the_same_bytes_in_one_run_are_paid_once(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    sample = SampleRecording("in/a.wav", 20)
    short = SampleRecording("in/clip.wav", 6)  # the discrete route
    upload_samples(s3_client, bucket, (sample, short))
    for src, dst in (("in/a.wav", "in/b.wav"), ("in/clip.wav", "in/clip-copy.wav")):
        s3_client.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset")
    state = night(f"s3://{bucket}/in/")
    assert state.is_completed()
    assert {s for s, _ in statuses(database_url).values()} == {"completed"}
    bill = paid(emu)
    assert bill["valence_async"] == 1 and bill["valence_discrete"] == 1 and bill["valsea_job"] == 2
    # Each recording's timeline reads back (the copy's through its reuse link).
    from results_store.db import Store
    from results_store.repository import timeline_for_uri

    store = Store(database_url)
    with store.session_scope() as s:
        for key in ("in/clip.wav", "in/clip-copy.wav", "in/a.wav", "in/b.wav"):
            timeline = timeline_for_uri(s, f"s3://{bucket}/{key}")
            assert timeline is not None and timeline.segments, key
    store.dispose()


def test_a_twin_is_waited_for_or_reused_whatever_it_has_reached_never_paid_again(migrated_url: str) -> None:
    """Who pays for a recording's bytes is decided in one transaction. CI caught the two-step
    version paying twice: the copy looked for stored results while its twin was still
    submitted, the twin's last job was stored, then the copy looked for a twin in flight and
    found none."""
    from results_store import repository as repo
    from results_store.models import RecordingStatus
    from tests.store.factories import RUN_ID, process, recording_in, start_run
    from valence_pipeline.bookkeeping import PipelineStore

    original = recording_in(1)
    sha = original.sha256
    assert sha is not None
    pipeline = PipelineStore(migrated_url)
    with pipeline.store.session_scope() as s:
        start_run(s)
        twin = repo.upsert_recording(s, original)
        copy = repo.upsert_recording(s, recording_in(2, sha256=sha, key="copies/call-0002.wav"))
        alone = repo.upsert_recording(s, lone := recording_in(3))
    twin_uri = twin.uri
    # The first to ask takes the bytes to the providers; a twin asking while it does waits.
    assert pipeline.take_content(twin.id, sha, RUN_ID) == ("go", None)
    for status in (RecordingStatus.UPLOADING, RecordingStatus.SUBMITTED):
        with pipeline.store.session_scope() as s:
            repo.set_recording_status(s, twin.id, status)
        assert pipeline.take_content(copy.id, sha, RUN_ID) == ("wait", twin_uri)
    # The twin's results are stored (not yet in the dataset): the copy reuses them, unpaid.
    with pipeline.store.session_scope() as s:
        process(s, twin)
        repo.set_recording_status(s, twin.id, RecordingStatus.STORED)
    assert pipeline.take_content(copy.id, sha, RUN_ID) == ("reuse", twin_uri)
    assert lone.sha256 is not None
    assert pipeline.take_content(alone.id, lone.sha256, RUN_ID) == ("go", None)
    with pipeline.store.session_scope() as s:
        assert repo.get_recording(s, copy.id).status is RecordingStatus.STORED
        assert repo.get_recording(s, alone.id).status is RecordingStatus.UPLOADING
        timeline = repo.timeline_for_uri(s, copy.uri)
    assert timeline is not None and len(timeline.segments) == 4
    pipeline.store.dispose()


@pytest.mark.usefixtures("prefect_harness")
def test_valsea_out_of_credits_is_a_fact_of_the_run_not_of_the_process(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    emu = make_emulator(time_scale=3600.0, valsea_credits=2)
    samples = tuple(SampleRecording(f"in/c{i}.wav", 15 + i) for i in range(5))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset")
    state = night(f"s3://{bucket}/in/")
    assert state.is_failed()
    [(flags,)] = query(database_url, "select flags from pipeline_runs")
    assert "valsea_out_of_credits" in str(flags)
    reasons = [r for s, r in statuses(database_url).values() if s == "failed"]
    assert reasons and all("insufficient_credits" in (r or "") for r in reasons)
    assert "insufficient credits" in state.result(raise_on_failure=False).result["summary"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_lost_valsea_submit_answer_is_unknown_and_only_an_operators_retry_sends_it_again(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    from flows.ingest import retry_failed, run_to_result
    from valence_client import ValseaClient
    from valence_client.errors import APIConnectionError

    upload_samples(s3_client, bucket, (SampleRecording("in/lost.wav", 20),))
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset")
    real = ValseaClient.submit

    def answer_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)  # Valsea has the job (and bills it) ...
        raise APIConnectionError("valsea: POST /v1/prosody failed: the answer was lost", provider="valsea")

    monkeypatch.setattr(ValseaClient, "submit", answer_lost)
    assert night(f"s3://{bucket}/in/").is_failed()
    [(status, reason)] = statuses(database_url).values()
    assert status == "failed" and "valsea: outcome_unknown" in (reason or "")
    assert paid(emu)["valsea_job"] == 1

    monkeypatch.setattr(ValseaClient, "submit", real)
    assert night(f"s3://{bucket}/in/").is_failed()  # the nightly run does not send it again
    assert paid(emu)["valsea_job"] == 1

    from valence_pipeline.runtime import reset_runtime

    reset_runtime()
    result = run_to_result(retry_failed)  # an operator's retry does
    assert result["completed"] == 1
    assert paid(emu)["valsea_job"] == 2 and paid(emu)["valence_async"] == 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_discrete_answer_is_kept_when_the_shared_limiter_cannot_record_its_headers(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    """The limiter's database going away after an answer arrived (a PostgreSQL restart) once
    dropped the paid call's intent and sent it again: paid twice. The answer stands now."""
    import sqlalchemy as sa

    from valence_pipeline.limits import DatabaseLedger

    upload_samples(s3_client, bucket, (SampleRecording("in/clip.wav", 6),))  # the discrete route
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset",
        VALENCE_PIPELINE_PROVIDERS='["valence"]', VALENCE_PIPELINE_STEP_RETRY_DELAY_S="0.2",
    )  # fmt: skip
    refused: list[str] = []

    def database_gone(self: DatabaseLedger, seen: Any) -> None:
        refused.append(self.provider)
        raise sa.exc.OperationalError("insert", {}, Exception("server closed the connection (injected)"))

    monkeypatch.setattr(DatabaseLedger, "observe", database_gone)
    assert night(f"s3://{bucket}/in/").is_completed()
    assert refused, "no answer's headers reached the shared limiter"
    assert {s for s, _ in statuses(database_url).values()} == {"completed"}
    assert paid(emu)["valence_discrete"] == 1


def test_a_call_may_have_been_done_unless_the_provider_said_no_or_it_never_left() -> None:
    from valence_client.errors import APIConnectionError, InvalidRequestError, ServerError
    from valence_pipeline.engine import may_have_been_done

    lost = APIConnectionError("read timed out")
    refused = APIConnectionError("connection refused")
    refused.may_have_arrived = False
    assert may_have_been_done(lost) and not may_have_been_done(refused)
    assert may_have_been_done(ServerError("answered 200 with a non-JSON body", status=200))
    assert not may_have_been_done(ServerError("bad gateway", status=502))
    assert not may_have_been_done(InvalidRequestError("too short", status=400))
    assert not may_have_been_done(ConnectionResetError("reading our own audio from S3"))
    assert may_have_been_done(KeyboardInterrupt())  # stopped while the call may be on the wire


@pytest.mark.usefixtures("prefect_harness")
def test_a_lost_discrete_answer_is_unknown_and_the_setting_resends_it_on_the_next_run(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    """The discrete call has no idempotency key either: a lost answer is not sent again by a
    retry of the step; the run's summary says so; with `VALENCE_PIPELINE_RESEND_UNKNOWN` the
    next night sends it again by itself."""
    from valence_client.client import DiscreteAPI
    from valence_client.errors import APIConnectionError
    from valence_pipeline.settings import get_settings

    upload_samples(s3_client, bucket, (SampleRecording("in/clip.wav", 6),))  # the discrete route
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(
        monkeypatch, seaweedfs, emu, database_url, tmp_path / "dataset",
        VALENCE_PIPELINE_PROVIDERS='["valence"]', VALENCE_PIPELINE_STEP_RETRY_DELAY_S="0.2",
    )  # fmt: skip
    real = DiscreteAPI.emotions

    def answer_lost(self: Any, *args: Any, **kwargs: Any) -> Any:
        real(self, *args, **kwargs)  # Valence analysed it (and billed it) ...
        raise APIConnectionError("valence: POST /v1/discrete/emotion failed: the answer was lost")

    monkeypatch.setattr(DiscreteAPI, "emotions", answer_lost)
    state = night(f"s3://{bucket}/in/")
    assert state.is_failed()
    [(status, reason)] = statuses(database_url).values()
    assert status == "failed" and "valence: outcome_unknown" in (reason or "")
    assert "- valence: outcome_unknown: 1" in state.result(raise_on_failure=False).result["summary"]
    assert paid(emu)["valence_discrete"] == 1

    monkeypatch.setattr(DiscreteAPI, "emotions", real)
    monkeypatch.setenv("VALENCE_PIPELINE_RESEND_UNKNOWN", "true")
    get_settings.cache_clear()
    assert night(f"s3://{bucket}/in/").is_completed()
    assert paid(emu)["valence_discrete"] == 2  # the resend the setting allows
    assert {s for s, _ in statuses(database_url).values()} == {"completed"}
