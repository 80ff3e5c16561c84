"""The database and the dataset's Delta tables agree row for row, and lineage follows the rows
to the files and table versions holding them through re-processing and compaction (on both
databases); `valence-pipeline lineage` resolves them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa

from results_store import dataset
from results_store import repository as repo
from results_store.db import Store
from results_store.models import Lineage, OutputKind
from results_store.records import DatasetRows
from results_store.storage import s3_filesystem

from .factories import RUN_ID, process, recording_in, start_run
from .readers import KEY_COLUMNS, all_readers_keys

TABLE_ROWS = {
    "recordings": "recordings",
    "emotion_segments": "emotion_segments",
    "prosody_summary": "prosody_summaries",
    "prosody_utterances": "prosody_utterances",
}


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("run_id", "processing_date")}
    for name in ("all_predictions", "expressions"):
        if isinstance(out.get(name), list):
            out[name] = dict(out[name])
    return out


def assert_dataset_matches_database(store: Store, output_uri: str, recording_ids: list[int]) -> None:
    with store.session_scope() as s:
        expected: DatasetRows = repo.dataset_rows(s, recording_ids)
    for table, attr in TABLE_ROWS.items():
        key = KEY_COLUMNS[table]
        want = sorted(
            (_normalise(dataclasses.asdict(r)) for r in getattr(expected, attr)),
            key=lambda r: [r[k] for k in key],
        )
        got = sorted(
            (_normalise(r) for r in dataset.read_table(output_uri, table).to_pylist()),
            key=lambda r: [r[k] for k in key],
        )
        assert got == want, table
        seen = all_readers_keys(output_uri, table)
        assert seen["duckdb"] == seen["deltalake"] == sorted(tuple(r[k] for k in key) for r in want), table


def export(store: Store, output_uri: str, run_id: str, recording_ids: list[int]) -> None:
    """What the pipeline does at the end of a run: write the run's recordings, record lineage."""
    with store.session_scope() as s:
        rows = repo.dataset_rows(s, recording_ids)
    with dataset.DatasetWriter(output_uri, run_id) as writer:
        writer.add(rows)
    assert writer.result is not None
    with store.session_scope() as s:
        repo.record_dataset_commit(s, writer.result)


def assert_lineage_points_at_current_files(store: Store, output_uri: str) -> None:
    """Every current dataset lineage row names a file of the table's current version that
    holds that many rows of that recording and job, added at the recorded version; every
    current file is named."""
    with store.session_scope() as s:
        rows = s.execute(
            sa.select(Lineage).where(
                Lineage.output_kind == OutputKind.PARQUET, Lineage.superseded_at.is_(None)
            )
        ).scalars()
        current = [
            (r.table_name, r.output_uri, r.recording_id, r.job_id, r.row_count, r.table_version) for r in rows
        ]
    assert current
    live = {table: set(dataset.file_uris(output_uri, table)) for table in TABLE_ROWS}
    assert {uri for _t, uri, *_ in current} == set().union(*live.values())
    for table, uri, recording_id, job_id, row_count, version in current:
        assert uri in live[table]
        assert version is not None and uri in dataset.file_uris(output_uri, table, version=version)
        if uri.startswith("s3://"):
            held = pq.read_table(uri.removeprefix("s3://"), filesystem=s3_filesystem())
        else:
            held = pq.read_table(uri)
        ids = held.column("recording_id").to_pylist()
        jobs = held.column("provider_job_id").to_pylist() if job_id is not None else [None] * len(ids)
        assert sum(1 for r, j in zip(ids, jobs, strict=True) if (r, j) == (recording_id, job_id)) == row_count


def test_dataset_agrees_with_database_through_reprocessing_and_compaction(
    store: Store, output_uri: str
) -> None:
    with store.session_scope() as s:
        start_run(s)
        start_run(s, "run-2")
        refs = repo.upsert_recordings(s, [recording_in(n) for n in range(1, 5)])
        for ref in refs[:3]:
            process(s, ref, segments=5, utterances=2)
        for channel in (0, 1):  # a stereo call analysed per channel
            process(s, refs[3], segments=3, utterances=1, channel=channel)
        copy = repo.upsert_recording(s, recording_in(9, sha256=recording_in(1).sha256, key="copy.wav"))
        repo.record_reuse(s, recording_id=copy.id, source_recording_id=refs[0].id, flow_run_id=RUN_ID)
    ids = [r.id for r in refs] + [copy.id]
    export(store, output_uri, RUN_ID, ids)
    assert_dataset_matches_database(store, output_uri, ids)
    assert_lineage_points_at_current_files(store, output_uri)

    # The same run exported again (a retried task): nothing changes, no duplicate anywhere.
    export(store, output_uri, RUN_ID, ids)
    assert_dataset_matches_database(store, output_uri, ids)
    assert_lineage_points_at_current_files(store, output_uri)

    # Recording 2 is analysed again in a later run.
    with store.session_scope() as s:
        process(s, refs[1], segments=7, utterances=3, attempt=1, flow_run_id="run-2")
    export(store, output_uri, "run-2", [refs[1].id])
    assert_dataset_matches_database(store, output_uri, ids)
    assert_lineage_points_at_current_files(store, output_uri)
    with store.session_scope() as s:
        superseded = s.execute(
            sa.select(Lineage).where(Lineage.superseded_at.is_not(None), Lineage.recording_id == refs[1].id)
        ).scalars()
        assert {row.table_name for row in superseded} == set(TABLE_ROWS)
        # The other recordings' rows that shared a rewritten file kept their run.
        runs = s.execute(
            sa.select(Lineage.flow_run_id).where(
                Lineage.output_kind == OutputKind.PARQUET,
                Lineage.superseded_at.is_(None),
                Lineage.recording_id != refs[1].id,
            )
        ).scalars()
        assert set(runs) == {RUN_ID}

    # An upload-event run adds one new recording: new rows only, so new small files beside
    # the existing ones in each partition.
    with store.session_scope() as s:
        late = repo.upsert_recording(s, recording_in(5))
        process(s, late, segments=2, utterances=1, flow_run_id="run-2")
    ids.append(late.id)
    export(store, output_uri, "run-2", [late.id])
    assert_dataset_matches_database(store, output_uri, ids)
    assert_lineage_points_at_current_files(store, output_uri)

    # Compaction moves every row; lineage follows to the new files and versions.
    commits = dataset.compact(output_uri)
    assert commits and all(c.operation == "compact" and c.removed for c in commits)
    with store.session_scope() as s:
        repo.record_dataset_commit(s, commits)
    assert_dataset_matches_database(store, output_uri, ids)
    assert_lineage_points_at_current_files(store, output_uri)
