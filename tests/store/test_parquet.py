"""The Parquet dataset on a local folder and on S3 (SeaweedFS): round trip, one current copy of
every row for every reader, crash safety, file counts, compaction and concurrent commits."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from results_store import parquet
from results_store.models import DATASET_TABLES, EMOTION_SEGMENTS_TABLE
from results_store.records import DatasetRows
from results_store.storage import Location, open_location

from .factories import recording_record, segment_records, summary_record, utterance_records
from .readers import all_readers_keys, duplicates

DAY1 = dt.date(2025, 1, 1)
DAY2 = dt.date(2025, 1, 2)
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_run(
    output_uri: str, run_id: str, jobs: dict[int, int], *, day: dt.date = DAY1, segments: int = 4
) -> Any:
    """Commit one run holding `segments` timeline rows per recording -> job."""
    with parquet.DatasetWriter(output_uri, run_id, processing_date=day) as writer:
        for recording_id, job_id in jobs.items():
            writer.add_emotion_segments(segment_records(recording_id, job_id, segments))
    return writer.result


def segment_keys(output_uri: str) -> dict[str, list[tuple[Any, ...]]]:
    return all_readers_keys(output_uri, "emotion_segments")


def expected_keys(jobs: dict[int, int], segments: int = 4) -> list[tuple[int, int, int]]:
    return sorted((rid, job, i) for rid, job in jobs.items() for i in range(segments))


def test_rows_round_trip_with_the_declared_schema(output_uri: str) -> None:
    rows = DatasetRows(
        recordings=[recording_record(1)],
        emotion_segments=segment_records(1, 10, 3),
        prosody_summaries=[summary_record(1, 11)],
        prosody_utterances=utterance_records(1, 11, 2),
    )
    with parquet.DatasetWriter(output_uri, "run-1", processing_date=DAY1) as writer:
        writer.add(rows)
    assert writer.result is not None and writer.result.version == 1
    assert {f.table for f in writer.result.added} == set(DATASET_TABLES)

    segments = parquet.read_table(output_uri, "emotion_segments").to_pylist()
    assert [s["segment_index"] for s in segments] == [0, 1, 2]
    first = segments[0]
    source = rows.emotion_segments[0]
    assert first["run_id"] == "run-1" and first["processing_date"] == DAY1 and first["provider"] == "valence"
    assert first["emotion"] == source.emotion and first["provider_job_id"] == 10
    assert dict(first["all_predictions"]) == source.all_predictions
    utterance = parquet.read_table(output_uri, "prosody_utterances").to_pylist()[1]
    assert dict(utterance["expressions"]) == rows.prosody_utterances[1].expressions
    assert len(utterance["expressions"]) == 48
    recording = parquet.read_table(output_uri, "recordings").to_pylist()[0]
    assert recording["discovered_at"] == rows.recordings[0].discovered_at

    loc = open_location(output_uri)
    data_file = next(f for f in writer.result.added if f.table == "emotion_segments")
    rel = (
        data_file.uri.removeprefix("s3://")
        .removeprefix(loc.root + "/")
        .removeprefix(loc.root.lstrip("/") + "/")
    )
    metadata = pq.read_schema(loc.path(rel), filesystem=loc.fs).metadata
    assert metadata[b"valence_pipeline.schema_version"] == str(EMOTION_SEGMENTS_TABLE.version).encode()
    assert "/emotion_segments/processing_date=2025-01-01/provider=valence/part-" in data_file.uri


def test_staged_files_hold_rows_in_key_order_however_they_were_added(local_output_uri: str) -> None:
    # Rows that arrive in order are written as they are (no copy); others are sorted first.
    with parquet.DatasetWriter(local_output_uri, "run-1", processing_date=DAY1) as writer:
        writer.add_emotion_segments(segment_records(2, 20, 3)[::-1])
        writer.add_emotion_segments(segment_records(1, 10, 3))
    loc = open_location(local_output_uri)
    assert writer.result is not None
    (added,) = writer.result.added
    rows = pq.read_table(added.uri, filesystem=loc.fs).to_pylist()
    keys = [(r["recording_id"], r["provider_job_id"], r["segment_index"]) for r in rows]
    assert keys == expected_keys({1: 10, 2: 20}, segments=3)


def test_reprocessing_leaves_one_current_copy_for_every_reader(output_uri: str) -> None:
    write_run(output_uri, "run-1", {1: 10, 2: 20, 3: 30}, day=DAY1)
    # Recording 2 is processed again the next day by a new job.
    result = write_run(output_uri, "run-2", {2: 21}, day=DAY2, segments=6)

    current = {1: 10, 2: 21, 3: 30}
    want = sorted(expected_keys({1: 10, 3: 30}) + expected_keys({2: 21}, segments=6))
    for reader, found in segment_keys(output_uri).items():
        assert duplicates(found) == [], reader
        assert found == want, reader
    assert {r for r, _, _ in want} == set(current)
    assert len(result.relocated) == 1 and result.relocated[0].recording_ids == (1, 3)
    assert len(result.removed) == 1


def test_exception_mid_write_leaves_only_committed_rows_visible(
    output_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(output_uri, "run-1", {1: 10, 2: 20})
    before = segment_keys(output_uri)
    real_write = parquet._write_parquet
    calls = {"n": 0}

    def crash_on_second_file(loc: Location, rel: str, data: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            # Half a file's bytes reach storage, then the process "crashes".
            with loc.fs.open_output_stream(loc.path(rel)) as out:
                out.write(b"PAR1 partial")
            raise RuntimeError("simulated crash while writing")
        real_write(loc, rel, data)

    monkeypatch.setattr(parquet, "_write_parquet", crash_on_second_file)
    with (
        pytest.raises(RuntimeError, match="simulated crash"),
        parquet.DatasetWriter(output_uri, "run-2", max_buffered_rows=8) as writer,
    ):
        writer.add_emotion_segments(segment_records(2, 21, 8))  # flushed: staged file 1
        writer.add_emotion_segments(segment_records(3, 30, 8))  # flushed: crashes
    assert segment_keys(output_uri) == before
    assert open_location(output_uri).list(parquet.STAGING_DIR, recursive=True) == []


def test_crash_after_the_commit_point_is_finished_by_recover(
    output_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(output_uri, "run-1", {1: 10, 2: 20, 3: 30})
    real_move = Location.move

    def crash_on_move(self: Location, src: str, dst: str) -> None:
        raise RuntimeError("simulated crash while publishing")

    monkeypatch.setattr(Location, "move", crash_on_move)
    with pytest.raises(parquet.PublishError):
        write_run(output_uri, "run-2", {2: 21, 4: 40})
    monkeypatch.setattr(Location, "move", real_move)

    want = expected_keys({1: 10, 2: 21, 3: 30, 4: 40})
    found = segment_keys(output_uri)
    # The commit is durable: our reader sees it in full, from the staged files.
    assert found["read_table"] == want
    # Plain readers, mid-publish, may miss the rows being replaced but never see two copies.
    assert duplicates(found["pyarrow"]) == [] and set(found["pyarrow"]) <= set(want)
    # The next run's writer finishes the publish before anything else.
    parquet.DatasetWriter(output_uri, "run-3").abort()
    assert segment_keys(output_uri) == {"read_table": want, "pyarrow": want, "duckdb": want}
    assert parquet.recover(output_uri) == 2  # idempotent: nothing left to do


def test_recover_alone_finishes_an_interrupted_publish(
    local_output_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(local_output_uri, "run-1", {1: 10})

    def disk_gone(self: Location, src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(Location, "move", disk_gone)
    with pytest.raises(parquet.PublishError, match="durable but not fully published"):
        write_run(local_output_uri, "run-2", {1: 11})
    monkeypatch.undo()
    assert segment_keys(local_output_uri)["pyarrow"] == []  # old file deleted, new one still staged
    assert parquet.recover(local_output_uri) == 2
    assert segment_keys(local_output_uri)["duckdb"] == expected_keys({1: 11})


CHILD = """
import sys
from results_store.parquet import DatasetWriter
from tests.store.factories import segment_records

writer = DatasetWriter(sys.argv[1], "killed-run", max_buffered_rows=40)
recording = 1000
while True:  # stage file after file until killed; never commits
    writer.add_emotion_segments(segment_records(recording, recording, 40))
    recording += 1
"""


def test_killed_writer_process_leaves_only_committed_rows_visible(output_uri: str) -> None:
    write_run(output_uri, "run-1", {1: 10, 2: 20})
    before = segment_keys(output_uri)
    loc = open_location(output_uri)
    child = subprocess.Popen([sys.executable, "-c", CHILD, output_uri], cwd=REPO_ROOT, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while len(loc.list(parquet.STAGING_DIR, recursive=True)) < 3:
            assert child.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer staged nothing"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert segment_keys(output_uri) == before
    # Its leftovers are garbage only to `compact`, once old enough that no live run owns them.
    assert loc.list(parquet.STAGING_DIR, recursive=True)
    parquet.compact(output_uri, now=dt.datetime.now(dt.UTC) + parquet.STAGING_RETENTION * 2)
    assert loc.list(parquet.STAGING_DIR, recursive=True) == []
    assert segment_keys(output_uri) == before


def test_rows_readded_within_a_run_replace_the_earlier_ones(local_output_uri: str) -> None:
    with parquet.DatasetWriter(local_output_uri, "run-1", max_buffered_rows=5) as writer:
        writer.add_emotion_segments(segment_records(1, 10, 6, emotion="sad"))  # staged already
        writer.add_emotion_segments(segment_records(2, 20, 2))
        writer.add_emotion_segments(segment_records(1, 10, 3, emotion="happy"))  # job 10 again
        writer.add_emotion_segments(segment_records(1, 11, 2, channel=1))  # another job: kept
    data = parquet.read_table(local_output_uri, "emotion_segments")
    found = sorted(
        zip(
            *(data.column(c).to_pylist() for c in ("recording_id", "provider_job_id", "emotion")), strict=True
        )
    )
    assert found.count((1, 10, "happy")) == 3 and (1, 10, "sad") not in found
    assert sum(1 for r in found if r[:2] == (1, 11)) == 2 and sum(1 for r in found if r[0] == 2) == 2
    assert writer.result is not None
    sources = {(s.recording_id, s.job_id): s.rows for f in writer.result.added for s in f.sources}
    assert sources == {(1, 10): 3, (1, 11): 2, (2, 20): 2}


def test_a_night_of_recordings_makes_a_few_files_not_one_per_recording(local_output_uri: str) -> None:
    with parquet.DatasetWriter(
        local_output_uri, "night", processing_date=DAY1, max_buffered_rows=1000
    ) as writer:
        for rid in range(1, 301):
            writer.add_recordings([recording_record(rid)])
            writer.add_emotion_segments(segment_records(rid, rid, 10))
    files = sorted(
        p.relative_to(local_output_uri).parts[0] for p in Path(local_output_uri).rglob("*.parquet")
    )
    # 3000 segment rows at 1000 per flush -> 3 files; 300 recording rows -> 1 file.
    assert files == ["emotion_segments"] * 3 + ["recordings"]
    assert parquet.read_table(local_output_uri, "emotion_segments").num_rows == 3000


def test_compaction_merges_small_files_and_keeps_every_row(output_uri: str) -> None:
    for n in range(1, 6):  # five event-triggered runs, one recording each
        write_run(output_uri, f"event-{n}", {n: n * 10})
    before = segment_keys(output_uri)
    loc = open_location(output_uri)
    assert len(loc.list("emotion_segments", recursive=True)) == 5

    result = parquet.compact(output_uri)
    assert len(loc.list("emotion_segments", recursive=True)) == 1
    assert segment_keys(output_uri) == before
    assert len({r.new_uri for r in result.relocated}) == 1
    assert sorted(rid for r in result.relocated for rid in r.recording_ids) == [1, 2, 3, 4, 5]
    assert parquet.compact(output_uri).version is None  # nothing left to merge


def test_concurrent_commits_both_land_without_duplicates(output_uri: str) -> None:
    write_run(output_uri, "run-0", {1: 10, 2: 20, 3: 30})
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}
    runs = {"run-a": {2: 21, 4: 40}, "run-b": {3: 31, 5: 50}}

    def commit(run_id: str) -> None:
        writer = parquet.DatasetWriter(output_uri, run_id)
        for rid, job in runs[run_id].items():
            writer.add_emotion_segments(segment_records(rid, job, 4))
        barrier.wait(timeout=30)
        results[run_id] = writer.commit()

    threads = [threading.Thread(target=commit, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.version for r in results.values()) == [2, 3]
    want = expected_keys({1: 10, 2: 21, 3: 31, 4: 40, 5: 50})
    assert segment_keys(output_uri) == {"read_table": want, "pyarrow": want, "duckdb": want}


def test_checkpoints_and_log_pruning_keep_the_same_state(
    local_output_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquet, "CHECKPOINT_EVERY", 2)
    jobs = {}
    for n in range(1, 6):
        jobs[n] = n * 10
        write_run(local_output_uri, f"run-{n}", {n: n * 10})
    names = sorted(e.rel for e in open_location(local_output_uri).list(parquet.LOG_DIR))
    assert "_log/00000000000000000004.checkpoint.json" in names
    parquet.compact(local_output_uri, target_file_rows=1, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    names = sorted(e.rel for e in open_location(local_output_uri).list(parquet.LOG_DIR))
    assert names[0] == "_log/00000000000000000004.checkpoint.json"
    write_run(local_output_uri, "run-6", {6: 60})
    jobs[6] = 60
    assert parquet.load_snapshot(open_location(local_output_uri)).version == 6
    assert segment_keys(local_output_uri)["read_table"] == expected_keys(jobs)


def test_writer_rejects_wrong_rows_and_reuse(local_output_uri: str) -> None:
    writer = parquet.DatasetWriter(local_output_uri, "run-1")
    with pytest.raises(TypeError, match="EmotionSegmentRecord"):
        writer.add_emotion_segments([recording_record(1)])  # type: ignore[list-item]
    assert writer.commit().version is None  # nothing added: no commit
    with pytest.raises(parquet.DatasetError, match="already committed"):
        writer.add_recordings([recording_record(1)])
    with pytest.raises(ValueError, match="unknown table"):
        parquet.read_table(local_output_uri, "nope")
    assert parquet.read_table(local_output_uri, "recordings").num_rows == 0


def test_publishing_a_stale_head_after_a_later_commit_is_harmless(local_output_uri: str) -> None:
    """A writer that listed the log just before another commit landed re-publishes an entry
    whose files the newer commit already rewrote away: that must not fail."""
    write_run(local_output_uri, "run-1", {1: 10, 2: 20})
    loc = open_location(local_output_uri)
    stale = parquet.load_snapshot(loc).head
    write_run(local_output_uri, "run-2", {2: 21})  # rewrites commit 1's file away
    assert stale is not None and not loc.exists(stale.add[0].path)
    parquet.publish(loc, stale)
    assert segment_keys(local_output_uri)["duckdb"] == expected_keys({1: 10, 2: 21})
    # Without a newer commit, a missing file is a real inconsistency and is reported.
    head = parquet.load_snapshot(loc).head
    assert head is not None
    loc.delete(head.add[0].path)
    with pytest.raises(parquet.DatasetError, match="neither staged nor published"):
        parquet.publish(loc, head)


def test_planning_on_a_snapshot_another_commit_invalidated_replans(
    local_output_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_run(local_output_uri, "run-1", {1: 10, 2: 20})
    loc = open_location(local_output_uri)
    stale = parquet.load_snapshot(loc)
    write_run(local_output_uri, "run-2", {2: 21})  # the file holding recording 1 is rewritten
    real_load = parquet.load_snapshot
    served = {"stale": False}

    def first_stale(location: Location) -> parquet.Snapshot:
        # The writer's first attempt sees the log as it was before run-2 committed.
        if not served["stale"]:
            served["stale"] = True
            return stale
        return real_load(location)

    writer = parquet.DatasetWriter(local_output_uri, "run-3")
    writer.add_emotion_segments(segment_records(1, 11, 4))
    monkeypatch.setattr(parquet, "load_snapshot", first_stale)
    with caplog.at_level(logging.INFO, logger="results_store.parquet"):
        result = writer.commit()
    monkeypatch.undo()
    assert served["stale"] and result.version == 3
    assert "dataset changed while planning commit 2; re-planning" in caplog.text
    want = expected_keys({1: 11, 2: 21})
    assert segment_keys(local_output_uri) == {"read_table": want, "pyarrow": want, "duckdb": want}
    assert open_location(local_output_uri).list(parquet.STAGING_DIR, recursive=True) == []
