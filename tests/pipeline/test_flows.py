"""The nightly flow end to end: SeaweedFS + the emulator + the results store, on Prefect.

Each test gets its own bucket, database and Parquet folder; the emulator's ledger is the proof
of what was paid for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import child_flow_env, configure, count, in_flight, paid, query, statuses

SAMPLES: tuple[SampleRecording, ...] = (
    SampleRecording("in/clip-6s.wav", 6),
    SampleRecording("in/call-40s.wav", 40),
    SampleRecording("in/stereo-30s.wav", 30, channels=2),
    SampleRecording("in/meeting-20s.flac", 20, fmt="FLAC"),
    SampleRecording("in/hangup-2s.wav", 2, expect="rejected:too_short"),
    SampleRecording("in/garbled.wav", 10, corrupt=True, expect="rejected:unreadable"),
)


def assert_async_results_are_comprehensive(database_url: str, emu: Any) -> None:
    """Every async timeline row carries all the model's scores, and each async job records
    the model its result shows: the upload named none, so nothing pretends one was asked for."""

    from results_store.models import EmotionSegmentRow, ProviderJob
    from valence_client.models import VALENCE_MODELS

    rows = query(
        database_url,
        sa.select(ProviderJob.model, EmotionSegmentRow.all_predictions)
        .join(ProviderJob, ProviderJob.id == EmotionSegmentRow.job_id)
        .where(~ProviderJob.external_id.startswith("discrete:")),
    )
    assert rows
    for model, predictions in rows:
        assert model == "4emotions"  # the API's default analysed them
        assert set(predictions) == set(VALENCE_MODELS["4emotions"])
    uploads = [e for e in emu.ledger()["entries"] if e["kind"] == "valence_async"]
    assert uploads and all(e["model"] is None and e["analysed_with"] == "4emotions" for e in uploads)


def run_nightly(source: str) -> dict[str, Any]:
    from flows.ingest import nightly_ingest, run_to_result
    from valence_pipeline.runtime import reset_runtime

    reset_runtime()  # each run starts with fresh clients, flags and counters
    return run_to_result(nightly_ingest, source=source, trigger="manual")


@pytest.mark.usefixtures("prefect_harness")
def test_bucket_of_good_and_bad_recordings_ends_in_terminal_states(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    db_url: str,
    tmp_path: Path,
) -> None:
    database_url = db_url  # once on SQLite, once on PostgreSQL
    upload_samples(s3_client, bucket, SAMPLES)
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    result = run_nightly(f"s3://{bucket}/in/")

    final = statuses(database_url)
    for sample in SAMPLES:
        status, reason = final[sample.key]
        expected_status, _, expected_reason = sample.expect.partition(":")
        assert status == expected_status, (sample.key, status, reason)
        if expected_reason:
            assert reason is not None and reason.startswith(expected_reason)
    assert result["completed"] == 4 and result["rejected"] == 2 and result["failed"] == 0
    # The rejected files cost nothing: only the accepted four were paid for, once each.
    first = paid(emu)
    assert first["valsea_job"] == 4
    assert first["valence_async"] + first["valence_discrete"] == 4
    assert_async_results_are_comprehensive(database_url, emu)

    # The dataset (Delta tables) and the database agree row for row.
    from results_store.dataset import read_table

    segments = read_table(str(tmp_path / "parquet"), "emotion_segments")
    assert segments.num_rows == count(database_url, "emotion_segments") > 0

    # A second run finds nothing new and pays for nothing.
    again = run_nightly(f"s3://{bucket}/in/")
    assert again["seen"] == 0
    assert paid(emu) == first


@pytest.mark.usefixtures("prefect_harness")
def test_new_version_is_processed_and_a_copy_reuses_results(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    sample = SampleRecording("in/call.wav", 30)
    upload_samples(s3_client, bucket, (sample,))
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    run_nightly(f"s3://{bucket}/in/")
    before = paid(emu)

    # Same bytes under another key: linked, not paid again.
    s3_client.copy_object(
        Bucket=bucket, Key="in/copy-of-call.wav", CopySource={"Bucket": bucket, "Key": "in/call.wav"}
    )
    result = run_nightly(f"s3://{bucket}/in/")
    assert result["completed"] == 1
    assert paid(emu) == before
    assert statuses(database_url)["in/copy-of-call.wav"][0] == "completed"

    # A new version of the original: processed (and paid) again.
    upload_samples(s3_client, bucket, (SampleRecording("in/call.wav", 35),))
    result = run_nightly(f"s3://{bucket}/in/")
    assert result["completed"] == 1
    after = paid(emu)
    assert after["valsea_job"] == before["valsea_job"] + 1


@pytest.mark.usefixtures("prefect_harness")
def test_faults_end_in_terminal_states_without_paying_twice(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    emu = make_emulator(faults="5xx=0.1,429=0.1,drop=0.05,fail=0.2", seed=7)
    samples = tuple(SampleRecording(f"in/f{i}.wav", 8 + 7 * i) for i in range(6))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    run_nightly(f"s3://{bucket}/in/")

    final = statuses(database_url)
    assert set(final) == {s.key for s in samples}
    for status, reason in final.values():
        assert status in {"completed", "failed"}
        assert status == "completed" or reason
    ledger = emu.ledger()
    for sha, counts in ledger["by_sha256"].items():
        assert all(n <= 1 for kind, n in counts.items() if kind != "total"), (sha, counts)


_RUN_IN_CHILD = """
import sys
from flows.ingest import nightly_ingest, run_to_result
run_to_result(nightly_ingest, source=sys.argv[1], trigger="manual")
"""


@pytest.mark.usefixtures("prefect_harness")
def test_killed_run_resumes_without_uploading_again(
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # Real-time clock: the provider picks uploads up ~10 s later, so jobs are still in flight
    # when the first process dies.
    emu = make_emulator(time_scale=1.0)
    samples = tuple(SampleRecording(f"in/k{i}.wav", 20 + 5 * i) for i in range(3))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    env = {**child_flow_env(tmp_path / "child-prefect"), "PREFECT_API_URL": prefect_api}
    # Its own process group: the kill takes all it started.
    child = subprocess.Popen(
        [sys.executable, "-c", _RUN_IN_CHILD, f"s3://{bucket}/in/"], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 300

    def sending() -> int:
        try:
            return len(in_flight(database_url))
        except Exception:  # noqa: BLE001 - the child may not have created the schema yet
            return 1

    try:
        # Kill once every upload and submit is complete (billed, its id stored) but before
        # results are in.
        while time.monotonic() < deadline and child.poll() is None:
            billed = paid(emu)
            if (
                billed["valence_async"] >= len(samples)
                and billed["valsea_job"] >= len(samples)
                and not sending()
            ):
                break
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    uploads_before = paid(emu)["valence_async"]
    assert uploads_before == len(samples)

    result = run_nightly(f"s3://{bucket}/in/")
    assert result["completed"] == len(samples)
    assert paid(emu)["valence_async"] == uploads_before  # resumed from the stored request ids
    assert set(statuses(database_url).values()) == {("completed", None)}
