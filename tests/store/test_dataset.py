"""The dataset's Delta tables on a local folder and on S3 (SeaweedFS): round trip, upserts
without duplicates, time travel, crash safety, concurrent writers, compaction and vacuum, each
checked through deltalake's reader and through DuckDB."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from results_store import dataset
from results_store.models import DATASET_TABLES, EMOTION_SEGMENTS_TABLE
from results_store.records import DatasetRows

from .factories import recording_record, segment_records, summary_record, utterance_records
from .readers import all_readers_keys, duckdb_keys, duplicates

DAY1 = dt.date(2025, 1, 1)
DAY2 = dt.date(2025, 1, 2)
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_run(
    output_uri: str, run_id: str, jobs: dict[int, int], *, day: dt.date = DAY1, segments: int = 4
) -> Any:
    """Commit one run holding `segments` timeline rows per recording -> job."""
    with dataset.DatasetWriter(output_uri, run_id, processing_date=day) as writer:
        for recording_id, job_id in jobs.items():
            writer.add_emotion_segments(segment_records(recording_id, job_id, segments))
    return writer.result


def expected_keys(jobs: dict[int, int], segments: int = 4) -> list[tuple[int, int, int]]:
    return sorted((rid, job, i) for rid, job in jobs.items() for i in range(segments))


def assert_both_engines_see(
    output_uri: str, want: list[tuple[Any, ...]], *, version: int | None = None
) -> None:
    seen = all_readers_keys(output_uri, "emotion_segments", version=version)
    assert seen == {"deltalake": want, "duckdb": want}


def test_rows_round_trip_with_the_declared_schema(output_uri: str) -> None:
    rows = DatasetRows(
        recordings=[recording_record(1)],
        emotion_segments=segment_records(1, 10, 3),
        prosody_summaries=[summary_record(1, 11)],
        prosody_utterances=utterance_records(1, 11, 2),
    )
    with dataset.DatasetWriter(output_uri, "run-1", processing_date=DAY1) as writer:
        writer.add(rows)
    assert writer.result is not None
    written = {name: spec for name, spec in DATASET_TABLES.items() if name != "call_analytics"}
    assert writer.result.versions == dict.fromkeys(written, 1)

    for name, spec in written.items():
        data = dataset.read_table(output_uri, name)
        assert data.schema == spec.read_schema, name
        assert sorted(duckdb_keys(output_uri, name)) == sorted(
            all_readers_keys(output_uri, name)["deltalake"]
        )
    segments = dataset.read_table(output_uri, "emotion_segments").to_pylist()
    assert [s["segment_index"] for s in segments] == [0, 1, 2]
    first, source = segments[0], rows.emotion_segments[0]
    assert first["run_id"] == "run-1" and first["processing_date"] == DAY1 and first["provider"] == "valence"
    assert first["emotion"] == source.emotion and dict(first["all_predictions"]) == source.all_predictions
    utterance = dataset.read_table(output_uri, "prosody_utterances").to_pylist()[1]
    assert dict(utterance["expressions"]) == rows.prosody_utterances[1].expressions
    recording = dataset.read_table(output_uri, "recordings").to_pylist()[0]
    assert recording["discovered_at"] == rows.recordings[0].discovered_at
    # Hive-style partition folders, as Spark/Trino expect; lineage gets every added file.
    files = writer.result.tables[1].added
    assert writer.result.tables[1].table == "emotion_segments"
    assert "/emotion_segments/processing_date=2025-01-01/provider=valence/" in files[0].uri
    assert files[0].sources[0].run_id == "run-1" and files[0].sources[0].rows == 3


def test_a_rerun_adds_no_duplicates_and_reprocessing_replaces(output_uri: str) -> None:
    write_run(output_uri, "run-1", {1: 10, 2: 20, 3: 30})
    write_run(output_uri, "run-1", {1: 10, 2: 20, 3: 30})  # the same run exported again
    assert_both_engines_see(output_uri, expected_keys({1: 10, 2: 20, 3: 30}))

    # Recording 2 analysed again on day 2 by a new job with fewer segments: its old rows go.
    result = write_run(output_uri, "run-2", {2: 21}, day=DAY2, segments=2)
    want = sorted(expected_keys({1: 10, 3: 30}) + expected_keys({2: 21}, 2))
    assert_both_engines_see(output_uri, want)
    data = dataset.read_table(output_uri, "emotion_segments")
    assert not duplicates(
        list(zip(*(data.column(c).to_pylist() for c in ("provider_job_id", "segment_index")), strict=True))
    )
    assert {(r["recording_id"], r["processing_date"]) for r in data.to_pylist()} == {
        (1, DAY1),
        (2, DAY2),
        (3, DAY1),
    }
    commit = result.tables[0]
    assert commit.written == (2,) and commit.removed  # the day-1 file holding recording 2 was rewritten

    # Time travel: version 1 still reads as it was written.
    assert dataset.table_version(output_uri, "emotion_segments") == 3
    assert_both_engines_see(output_uri, expected_keys({1: 10, 2: 20, 3: 30}), version=1)


def test_rows_re_added_within_a_run_keep_the_last(local_output_uri: str) -> None:
    with dataset.DatasetWriter(local_output_uri, "run-1", processing_date=DAY1) as writer:
        writer.add_emotion_segments(segment_records(1, 10, 3, emotion="sad"))
        writer.add_emotion_segments(segment_records(1, 10, 3, emotion="angry"))
    rows = dataset.read_table(local_output_uri, "emotion_segments").to_pylist()
    assert [r["emotion"] for r in rows] == ["angry"] * 3


def test_a_failure_between_file_write_and_log_commit_leaves_nothing_visible(
    local_output_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(local_output_uri, "run-1", {1: 10})
    table = Path(local_output_uri) / "emotion_segments"
    # Something already sits where the next log entry goes: delta-rs writes the data files,
    # then cannot create the entry (create-if-absent fails), so the commit never happens.
    blocker = table / "_delta_log" / f"{2:020d}.json"
    blocker.mkdir()
    monkeypatch.setattr(dataset, "MAX_COMMIT_ATTEMPTS", 2)
    with pytest.raises(dataset.CommitConflictError):
        write_run(local_output_uri, "run-2", {2: 20, 3: 30}, day=DAY2)
    blocker.rmdir()

    orphans = [
        p
        for p in table.rglob("*.parquet")
        if str(p) not in dataset.file_uris(local_output_uri, "emotion_segments")
    ]
    assert orphans and all(
        "processing_date=2025-01-02" in str(p) for p in orphans
    )  # written, never committed
    assert dataset.table_version(local_output_uri, "emotion_segments") == 1
    assert_both_engines_see(local_output_uri, expected_keys({1: 10}))
    # Vacuum removes the leftovers once they are older than the retention (0 here).
    deleted = dataset.vacuum(local_output_uri, retention_days=0)
    assert sorted(deleted) == sorted(str(p) for p in orphans) and not any(p.exists() for p in orphans)
    write_run(local_output_uri, "run-2", {2: 20, 3: 30}, day=DAY2)
    assert_both_engines_see(local_output_uri, expected_keys({1: 10, 2: 20, 3: 30}))


WRITER_CHILD = """
import sys
from results_store import dataset
from tests.store.factories import segment_records
output_uri, rows_per_run = sys.argv[1], int(sys.argv[2])
for run in range(1, 1000):
    with dataset.DatasetWriter(output_uri, f"run-{run}") as writer:
        for rid in range(run * 1000, run * 1000 + 20):
            writer.add_emotion_segments(segment_records(rid, rid, rows_per_run // 20))
    print(run, flush=True)
"""


def test_a_writer_killed_mid_commit_leaves_whole_runs_only(local_output_uri: str) -> None:
    """A child writes run after run; it is killed (SIGKILL) while writing one. Every run a
    reader sees is complete, and both engines see the same rows."""
    rows_per_run = 100_000
    table = Path(local_output_uri) / "emotion_segments"

    def data_files() -> set[Path]:
        return {p for p in table.rglob("*") if p.is_file() and "_delta_log" not in p.parts}

    leftovers: list[Path] = []
    for _attempt in range(5):  # the kill must land between a run's files and its commit
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_CHILD, local_output_uri, str(rows_per_run)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "1"  # one run committed
            known = data_files()
            deadline = time.monotonic() + 60
            # Kill as soon as the next run has started writing its data files.
            while not (data_files() - known) and time.monotonic() < deadline:
                time.sleep(0.001)
            os.killpg(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()
        listed = set(dataset.file_uris(local_output_uri, "emotion_segments"))
        leftovers = [p for p in data_files() if str(p) not in listed]
        if leftovers:
            break
    assert leftovers, "the child was never killed mid-write"
    seen = all_readers_keys(local_output_uri, "emotion_segments")
    assert seen["deltalake"] == seen["duckdb"] and not duplicates(seen["deltalake"])
    runs = dataset.read_table(local_output_uri, "emotion_segments", columns=["run_id"]).column("run_id")
    per_run = pa.table({"run_id": runs}).group_by("run_id").aggregate([("run_id", "count")]).to_pylist()
    assert per_run and all(r["run_id_count"] == rows_per_run for r in per_run), per_run


def test_two_writers_at_once_both_land(output_uri: str) -> None:
    """Overlapping recordings from two writers at the same moment: on S3 the log entry is a
    conditional PUT, so one commit loses the race and is re-planned instead of overwriting."""
    write_run(output_uri, "run-0", {0: 0})  # the table exists; the race is for version 2 onwards
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(run: str, recordings: range) -> None:
        try:
            start.wait(timeout=30)
            for rid in recordings:  # several commits each, interleaved with the other writer's
                write_run(output_uri, run, {rid: rid})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=("run-a", range(1, 7))),
        threading.Thread(target=writer, args=("run-b", range(4, 10))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert_both_engines_see(output_uri, expected_keys({rid: rid for rid in range(10)}))
    # Every commit is its own version: none overwrote another's log entry.
    assert dataset.table_version(output_uri, "emotion_segments") == 1 + 12


def test_two_batches_with_interleaved_recordings_commit_at_once_and_both_land(output_uri: str) -> None:
    """Workers claim a night's recordings one by one, so two batches' recording ids interleave
    (1, 3, 5... and 2, 4, 6...): each commit replaces the rows of its own recordings only, even
    where the other batch's recordings lie inside its id range, and a commit that lost a race
    (both rewrote the same file) is re-planned. Some recordings were written before, by an
    earlier job, and must end with the new job's rows only."""
    write_run(output_uri, "earlier", {rid: 1000 + rid for rid in range(0, 24, 3)})
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    final: dict[int, int] = {}

    def writer(run: str, recordings: list[int]) -> None:
        try:
            start.wait(timeout=30)
            for n in range(0, len(recordings), 4):  # batches of 4 recordings, with gaps
                write_run(output_uri, run, {rid: rid for rid in recordings[n : n + 4]})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    odd, even = list(range(1, 24, 2)), list(range(0, 24, 2))
    final.update({rid: rid for rid in odd + even})
    threads = [threading.Thread(target=writer, args=(run, ids)) for run, ids in (("a", odd), ("b", even))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert_both_engines_see(output_uri, expected_keys(final))


def test_compaction_merges_small_files_and_vacuum_honours_retention(output_uri: str) -> None:
    for rid in range(1, 5):  # four upload-event runs: four small files in one partition
        write_run(output_uri, f"run-{rid}", {rid: rid})
    before = dataset.file_uris(output_uri, "emotion_segments")
    assert len(before) == 4
    version_before = dataset.table_version(output_uri, "emotion_segments")
    commits = dataset.compact(output_uri)
    assert [c.table for c in commits] == ["emotion_segments"]
    assert sorted(commits[0].removed) == sorted(before) and len(commits[0].added) == 1
    assert {s.run_id for s in commits[0].added[0].sources} == {"run-1", "run-2", "run-3", "run-4"}
    want = expected_keys({rid: rid for rid in range(1, 5)})
    assert_both_engines_see(output_uri, want)
    assert dataset.compact(output_uri) == []  # nothing left to merge

    # Within the retention the files of earlier versions stay, so time travel still works.
    assert dataset.vacuum(output_uri, retention_days=7) == []
    assert_both_engines_see(output_uri, want, version=version_before)
    # Past it they go, and with them the versions that needed them.
    assert sorted(dataset.vacuum(output_uri, retention_days=0)) == sorted(before)
    assert_both_engines_see(output_uri, want)
    with pytest.raises(dataset.DatasetError, match="vacuum removed its files"):
        dataset.read_table(output_uri, "emotion_segments", version=version_before)


def test_reading_an_unwritten_table_is_empty_and_a_foreign_schema_is_refused(local_output_uri: str) -> None:
    assert dataset.read_table(local_output_uri, "recordings").num_rows == 0
    assert dataset.file_uris(local_output_uri, "recordings") == []
    from deltalake import write_deltalake

    write_deltalake(dataset.table_uri(local_output_uri, EMOTION_SEGMENTS_TABLE), pa.table({"x": [1]}))
    with pytest.raises(dataset.DatasetError, match="migrate the table first"):
        write_run(local_output_uri, "run-1", {1: 10})


def test_the_readme_recipes_read_the_tables(local_output_uri: str) -> None:
    """What the README shows an analyst: pandas now and as of a version, DuckDB over the files."""
    import duckdb
    from deltalake import DeltaTable

    write_run(local_output_uri, "run-1", {1: 10})
    write_run(local_output_uri, "run-2", {2: 20})
    uri = dataset.table_uri(local_output_uri, "emotion_segments")
    segments = DeltaTable(uri).to_pandas()
    as_it_was = DeltaTable(uri, version=1).to_pandas()
    assert sorted(segments["recording_id"].unique()) == [1, 2] and list(
        as_it_was["recording_id"].unique()
    ) == [1]
    table = DeltaTable(uri)
    counts = duckdb.sql(
        "select emotion, count(*) from read_parquet($files, hive_partitioning=true) group by 1",
        params={"files": table.file_uris()},
    ).fetchall()
    assert sum(n for _e, n in counts) == len(segments) == 8


def test_the_s3_store_refuses_a_second_create_of_a_log_entry(
    s3_env: dict[str, str], s3_client: Any, bucket: str
) -> None:
    """What safe concurrent commits rely on, checked against the S3 the tests use: a PUT with
    `If-None-Match: *` on an existing key fails, and delta-rs is told to send it."""
    from botocore.exceptions import ClientError

    options = dataset.storage_options(f"s3://{bucket}/dataset")
    assert options is not None and options["conditional_put"] == "etag"
    assert options["AWS_ENDPOINT_URL"] == s3_env["AWS_ENDPOINT_URL"] and options["AWS_ALLOW_HTTP"] == "true"
    key = "dataset/emotion_segments/_delta_log/00000000000000000001.json"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"{}", IfNoneMatch="*")
    assert err.value.response["Error"]["Code"] in ("PreconditionFailed", "412")
