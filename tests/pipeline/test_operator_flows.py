"""The operators' flows: `retry_failed` gives failed recordings another go without paying again
for the jobs that did complete, and `backfill` takes the objects modified in a date range."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure, count, paid, statuses

SAMPLES = tuple(SampleRecording(f"ops/call-{i}.wav", 12 + 3 * i) for i in range(4))


@pytest.mark.usefixtures("prefect_harness")
def test_retry_failed_pays_only_for_the_jobs_that_failed(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    from flows.ingest import nightly_ingest, retry_failed, run_to_result
    from valence_pipeline.runtime import reset_runtime

    # Half the provider jobs end `failed` (seeded: the same ones every run).
    emu = make_emulator(time_scale=3600.0, faults="fail=0.5", seed=3)
    upload_samples(s3_client, bucket, SAMPLES)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    first = run_to_result(nightly_ingest, source=f"s3://{bucket}/ops/", trigger="manual")
    failed = count(database_url, "provider_jobs", "status = 'failed'")
    assert first["failed"] > 0 and failed > 0  # precondition: there is something to retry
    paid_first = sum(paid(emu).values())

    emu.set_faults("")
    reset_runtime()
    again = run_to_result(retry_failed)

    assert again["seen"] == first["failed"]
    assert set(statuses(database_url).values()) == {("completed", None)}
    assert sum(paid(emu).values()) - paid_first == failed  # completed jobs were not paid again


@pytest.mark.usefixtures("prefect_harness")
def test_backfill_takes_the_objects_modified_in_its_range(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    from flows.ingest import backfill, run_to_result
    from valence_pipeline.runtime import reset_runtime

    upload_samples(s3_client, bucket, SAMPLES[:2])
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, database_url, tmp_path / "parquet")
    today = s3_client.head_object(Bucket=bucket, Key=SAMPLES[0].key)["LastModified"].astimezone(UTC).date()
    source = f"s3://{bucket}/ops/"

    before = run_to_result(backfill, source=source, start=today - timedelta(days=7), end=today)
    assert before["seen"] == 0 and sum(paid(emu).values()) == 0  # uploaded today: not in range

    reset_runtime()
    done = run_to_result(backfill, source=source, start=today, end=today + timedelta(days=1), max_files=1)
    assert done["seen"] == 1 and done["completed"] == 1
    assert sorted(s for s, _ in statuses(database_url).values()) == ["completed"]
