"""The nightly run compacts the Parquet dataset: the small files that upload-event runs add
during the day are merged per partition, and lineage follows the rows to the merged files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure, count, query

# Dataset table -> database table holding the same rows.
TABLES = {
    "recordings": "recordings",
    "emotion_segments": "emotion_segments",
    "prosody_summary": "prosody_results",
}


def live_files(out: Path) -> Counter[str]:
    """Files per table partition in the dataset's current snapshot."""
    from results_store.models import DATASET_TABLES
    from results_store.parquet import load_snapshot
    from results_store.storage import open_location

    snap = load_snapshot(open_location(str(out)))
    return Counter(
        f"{table}/{sorted(f.partition.items())}" for table in DATASET_TABLES for f in snap.table_files(table)
    )


def parquet_lineage(database_url: str) -> list[tuple[str, Any]]:
    rows = query(database_url, "select output_uri, superseded_at from lineage where output_kind = 'parquet'")
    return [(uri, superseded) for uri, superseded in rows]


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_run_merges_the_days_event_files_and_lineage_follows(
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    tmp_path: Path,
) -> None:
    from flows.ingest import nightly_ingest, process_recordings, run_to_result
    from results_store.parquet import read_table
    from valence_pipeline.runtime import reset_runtime

    samples = tuple(SampleRecording(f"ev/call-{i}.wav", 12 + i) for i in range(3))
    upload_samples(s3_client, bucket, samples)
    database_url = f"sqlite:///{tmp_path / 'results.db'}"
    out = tmp_path / "parquet"
    configure(monkeypatch, seaweedfs, emu, database_url, out)
    for sample in samples:  # three upload events: three runs, three files per partition
        reset_runtime()
        run_to_result(process_recordings, uris=[f"s3://{bucket}/{sample.key}"], trigger="event")
    before = live_files(out)
    assert before and set(before.values()) == {len(samples)}

    reset_runtime()
    result = run_to_result(nightly_ingest, source=f"s3://{bucket}/ev/", trigger="manual")

    assert result["seen"] == 0  # nothing new: the night only tidies up
    assert result["dataset_files_compacted"] == sum(before.values())
    after = live_files(out)
    assert set(after) == set(before) and set(after.values()) == {1}
    for table, db_table in TABLES.items():
        assert read_table(str(out), table).num_rows == count(database_url, db_table) > 0
    # Every current lineage row names a file that is in the dataset; none names a merged-away one.
    current = {uri for uri, superseded in parquet_lineage(database_url) if superseded is None}
    assert current and all(Path(uri).is_file() for uri in current)
    assert len(current) == len(after)
