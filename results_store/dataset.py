"""The results dataset: one Delta Lake table (delta-rs) per `DatasetTable`, under one root.

Layout under the output root (local folder or s3://bucket/prefix):

    emotion_segments/_delta_log/00000000000000000003.json    the table's transaction log
    emotion_segments/processing_date=2025-01-02/provider=valence/part-...parquet
    prosody_utterances/...  prosody_summary/...  recordings/processing_date=.../part-...parquet

What Delta gives us, and how it is used here:
  * A commit is one log entry created only if absent (a hard link locally, a conditional PUT
    `If-None-Match: *` on S3), so readers see whole commits or nothing: data files a writer
    wrote before dying are in no log entry and no reader of the table sees them. `vacuum`
    deletes such leftovers once they are older than the retention.
  * A run's rows go in with one commit per table that replaces every earlier row of the
    commit's recordings (a predicate overwrite, Delta's `replaceWhere`, on a `recording_id`
    range): a re-run puts its rows in the old ones' place instead of adding copies, and the
    rows an earlier job left for a recording go in the same commit, so the table holds each
    recording's current results only. Only files whose `recording_id` statistics can hold the
    commit's recordings are read, so a commit costs what it writes, not the table's size. Two
    writers at once: the loser of a commit race gets `CommitFailedError` and re-plans its
    write on the new version.
  * Each table commits on its own (Delta has no multi-table transaction). A run that dies
    between two tables' commits leaves the earlier ones written; re-running the export writes
    the same rows again in their own place and changes nothing there.
  * `compact` (`optimize.compact`) merges small files; `vacuum` removes files that no version
    within the retention needs; `read_table(..., version=N)` reads an earlier version.
  * Lineage: every commit is described by a `TableCommit` (its version, the files it added
    with the (recording, job, run) rows each holds, the files it removed), read back from the
    commit's own log entry; `repository.record_dataset_commit` stores it.

Readers other than this module should go through the log (deltalake, Spark, Trino, Polars,
DuckDB's delta extension), or through `file_uris`; a plain folder glob can also see
uncommitted leftovers and files that earlier versions replaced.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import operator
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from results_store.models import (
    DATASET_TABLES,
    EMOTION_SEGMENTS_TABLE,
    PROSODY_SUMMARY_TABLE,
    PROSODY_UTTERANCES_TABLE,
    RECORDINGS_TABLE,
    DatasetTable,
    EmotionSegmentRecord,
    ProsodySummaryRecord,
    ProsodyUtteranceRecord,
    RecordingRecord,
)
from results_store.records import CommitResult, DatasetRows, FileSource, TableCommit
from results_store.storage import Location, delta_storage_options, open_location

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

LOG_DIR = "_delta_log"
MAX_COMMIT_ATTEMPTS = 20
DEFAULT_RETENTION_DAYS = 7
DEFAULT_TARGET_FILE_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 256 * 1024
SCHEMA_VERSION_KEY = "valence_pipeline.schema_version"


class DatasetError(RuntimeError):
    """A table is not in a state this code can work with (e.g. its schema is not the declared one)."""


class CommitConflictError(DatasetError):
    """Other writers kept committing first; gave up after `MAX_COMMIT_ATTEMPTS`."""


# --------------------------------------------------------------------------- tables


def _table(name: str | DatasetTable) -> DatasetTable:
    if isinstance(name, DatasetTable):
        return name
    try:
        return DATASET_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; one of {sorted(DATASET_TABLES)}") from None


def table_uri(output_uri: str, table: str | DatasetTable) -> str:
    """Where `table`'s Delta table lives: what to give `DeltaTable(...)`, Spark, Trino or Polars."""
    return open_location(output_uri).uri(_table(table).name)


def storage_options(output_uri: str) -> dict[str, str] | None:
    """delta-rs's object-store options for this root (None for a local folder)."""
    return delta_storage_options() if output_uri.startswith("s3://") else None


def open_table(
    output_uri: str, table: str | DatasetTable, *, version: int | None = None
) -> DeltaTable | None:
    """The table as of `version` (default: the newest), or None if it was never written."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    spec = _table(table)
    try:
        return DeltaTable(
            table_uri(output_uri, spec), version=version, storage_options=storage_options(output_uri)
        )
    except TableNotFoundError:
        return None


def _open_or_create(output_uri: str, spec: DatasetTable) -> DeltaTable:
    from deltalake import CommitProperties, DeltaTable

    existing = open_table(output_uri, spec)
    if existing is not None:
        _check_schema(existing, spec)
        return existing
    # mode="ignore": two writers creating the table at once both end up with the one that won.
    DeltaTable.create(
        table_uri(output_uri, spec),
        schema=spec.read_schema,
        mode="ignore",
        partition_by=list(spec.partition_by),
        name=spec.name,
        storage_options=storage_options(output_uri),
        commit_properties=CommitProperties(custom_metadata={SCHEMA_VERSION_KEY: str(spec.version)}),
    )
    created = open_table(output_uri, spec)
    assert created is not None
    _check_schema(created, spec)
    return created


def _check_schema(delta: DeltaTable, spec: DatasetTable) -> None:
    found = pa.schema(delta.schema().to_arrow())
    if found.names != spec.read_schema.names:
        raise DatasetError(
            f"table {spec.name} at {delta.table_uri} has columns {found.names}, the code declares "
            f"{spec.read_schema.names} (schema version {spec.version}): migrate the table first"
        )


# --------------------------------------------------------------------------- Arrow conversion


def records_to_arrow(
    table: DatasetTable, rows: Sequence[Any], run_id: str, processing_date: dt.date
) -> pa.Table:
    """Typed records to a table with exactly the declared columns (file columns, then the
    partition columns), the run id and the processing date stamped."""
    columns: list[pa.Array] = []
    for fld in table.read_schema:
        if fld.name == "run_id":
            columns.append(pa.array([run_id] * len(rows), type=fld.type))
        elif fld.name == "processing_date":
            columns.append(pa.array([processing_date] * len(rows), type=fld.type))
        else:
            getter = operator.attrgetter(fld.name)
            columns.append(pa.array([getter(r) for r in rows], type=fld.type))
    return pa.Table.from_arrays(columns, schema=table.read_schema)


def _keep_last(data: pa.Table, key: Sequence[str]) -> pa.Table:
    """Rows whose natural key repeats keep only their last occurrence (a later `add` in the
    same run replaces an earlier one; a commit holds one row per key)."""
    if data.num_rows < 2:
        return data
    indexed = data.select(list(key)).append_column("_row", pa.array(range(data.num_rows), pa.int64()))
    last = indexed.group_by(list(key), use_threads=False).aggregate([("_row", "max")])
    if last.num_rows == data.num_rows:
        return data
    return data.take(last.column("_row_max").sort())


def _replace_predicate(recording_ids: Sequence[int]) -> str:
    """The rows a commit replaces: those of its recordings. The id range comes first, so
    delta-rs skips every file whose `recording_id` statistics lie outside it (DataFusion's
    file pruning does not use a long IN list); the IN list, only where the ids have gaps,
    keeps the rows of recordings inside the range that this commit does not carry."""
    low, high = int(recording_ids[0]), int(recording_ids[-1])
    predicate = f"recording_id >= {low} AND recording_id <= {high}"
    if high - low + 1 != len(recording_ids):
        predicate += f" AND recording_id IN ({', '.join(str(int(i)) for i in recording_ids)})"
    return predicate


# --------------------------------------------------------------------------- the writer


class DatasetWriter:
    """Collects one run's rows and commits them to the Delta tables, one commit per table.

    Use one writer per run: add rows (any `DatasetTable`'s records) as recordings finish, then
    `commit()` once. Rows are held as Arrow until the commit; nothing is visible to readers
    before it. Rows of a recording replace that recording's rows from earlier commits in the
    same table (upsert on the natural key; rows of the recording's earlier jobs are deleted).
    As a context manager it commits on a clean exit and discards everything on an exception.
    """

    def __init__(self, output_uri: str, run_id: str, *, processing_date: dt.date | None = None) -> None:
        self.output_uri = output_uri
        self.run_id = run_id
        self.processing_date = processing_date or dt.datetime.now(dt.UTC).date()
        self.result: CommitResult | None = None
        self._loc = open_location(output_uri)
        self._pending: dict[str, tuple[DatasetTable, list[pa.Table]]] = {}
        self._closed = False

    # -- adding rows

    def add_rows(self, table: DatasetTable, rows: Iterable[Any]) -> None:
        """Rows of any declared table (`table.record` instances)."""
        self._check_open()
        batch = list(rows)
        if not batch:
            return
        wrong = next((r for r in batch if not isinstance(r, table.record)), None)
        if wrong is not None:
            raise TypeError(f"{table.name} takes {table.record.__name__}, got {type(wrong).__name__}")
        _spec, chunks = self._pending.setdefault(table.name, (table, []))
        chunks.append(records_to_arrow(table, batch, self.run_id, self.processing_date))

    def add_recordings(self, rows: Iterable[RecordingRecord]) -> None:
        self.add_rows(RECORDINGS_TABLE, rows)

    def add_emotion_segments(self, rows: Iterable[EmotionSegmentRecord]) -> None:
        self.add_rows(EMOTION_SEGMENTS_TABLE, rows)

    def add_prosody(
        self, summaries: Iterable[ProsodySummaryRecord], utterances: Iterable[ProsodyUtteranceRecord] = ()
    ) -> None:
        self.add_rows(PROSODY_SUMMARY_TABLE, summaries)
        self.add_rows(PROSODY_UTTERANCES_TABLE, utterances)

    def add(self, rows: DatasetRows) -> None:
        """All four tables at once, e.g. `repository.dataset_rows(...)` for finished recordings."""
        self.add_recordings(rows.recordings)
        self.add_emotion_segments(rows.emotion_segments)
        self.add_prosody(rows.prosody_summaries, rows.prosody_utterances)

    # -- committing

    def commit(self) -> CommitResult:
        """Merge every table's rows, one Delta commit per table; returns what each commit
        changed, for `repository.record_dataset_commit`."""
        self._check_open()
        self._closed = True
        commits = []
        for spec, chunks in self._pending.values():
            data = _keep_last(pa.concat_tables(chunks), spec.row_key)
            commits.append(_replace(self.output_uri, self._loc, spec, data, self.run_id))
        self._pending = {}
        self.result = CommitResult(run_id=self.run_id, tables=tuple(commits))
        return self.result

    def abort(self) -> None:
        """Discard the rows added so far; nothing of this writer becomes visible."""
        self._closed = True
        self._pending = {}

    def _check_open(self) -> None:
        if self._closed:
            raise DatasetError("this DatasetWriter was already committed or aborted; make a new one per run")

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _replace(output_uri: str, loc: Location, spec: DatasetTable, data: pa.Table, run_id: str) -> TableCommit:
    """One commit that replaces every row of `data`'s recordings with `data` (a predicate
    overwrite, Delta's `replaceWhere`): a re-run's rows take the old ones' place, and rows an
    earlier job left for a recording go in the same commit.

    Not a `merge` on the natural key: a merge that must also delete the earlier jobs' rows
    (`when_not_matched_by_source_delete`) reads every file of the table, so each commit grew
    with the whole dataset, in time and in memory (`bench/bench_dataset_commits.py`: 16
    commits of 250 recordings, 271 -> 330 MiB and 2.39 s as a merge, 266 -> 285 MiB and
    1.00 s this way). This reads only the files whose `recording_id` range can hold the
    commit's recordings."""
    from deltalake import CommitProperties, WriterProperties, write_deltalake
    from deltalake.exceptions import CommitFailedError

    recording_ids = sorted(set(data.column("recording_id").to_pylist()))
    predicate = _replace_predicate(recording_ids)
    properties = CommitProperties(
        custom_metadata={"valence_pipeline.run_id": run_id, SCHEMA_VERSION_KEY: str(spec.version)},
        max_commit_retries=0,  # a conflict re-plans the whole write below, on the new version
    )
    writer_properties = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        delta = _open_or_create(output_uri, spec)
        try:
            write_deltalake(
                delta,
                data,
                mode="overwrite",
                predicate=predicate,
                writer_properties=writer_properties,
                commit_properties=properties,
            )
        except CommitFailedError as exc:
            log.info(
                "%s: commit lost to another writer (%s); re-planning (attempt %d)",
                spec.name,
                exc,
                attempt + 1,
            )
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
            continue
        # `delta` is now at the version this write committed (not a later writer's).
        commit = describe_commit(loc, spec, delta.version(), operation="replace", written=recording_ids)
        log.info(
            "dataset %s version %d (replace, run %s): %d rows of %d recordings in %d files, %d files replaced",
            table_uri(output_uri, spec), commit.version, run_id, data.num_rows, len(recording_ids),
            len(commit.added), len(commit.removed),
        )  # fmt: skip
        return commit
    raise CommitConflictError(
        f"could not commit to {table_uri(output_uri, spec)} after {MAX_COMMIT_ATTEMPTS} attempts"
    )


# --------------------------------------------------------------------------- what a commit did


def commit_actions(loc: Location, spec: DatasetTable, version: int) -> tuple[list[str], list[str]]:
    """The data files (paths relative to the table) one commit added and removed."""
    raw = loc.read_bytes(f"{spec.name}/{LOG_DIR}/{version:020d}.json")
    added: list[str] = []
    removed: list[str] = []
    for line in raw.decode().splitlines():
        if not line.strip():
            continue
        action = json.loads(line)
        if "add" in action:
            added.append(unquote(action["add"]["path"]))
        elif "remove" in action:
            removed.append(unquote(action["remove"]["path"]))
    return added, removed


def describe_commit(
    loc: Location, spec: DatasetTable, version: int, *, operation: str, written: Sequence[int] = ()
) -> TableCommit:
    """A `TableCommit` for one version of one table: its added files with the rows of each
    (recording, job, run) they hold, read from the files themselves, and its removed files."""
    added, removed = commit_actions(loc, spec, version)
    has_job = "provider_job_id" in spec.schema.names
    columns = ["recording_id", "run_id"] + (["provider_job_id"] if has_job else [])
    files = []
    for rel in added:
        data = pq.read_table(loc.path(f"{spec.name}/{rel}"), filesystem=loc.fs, columns=columns)
        jobs = data.column("provider_job_id").to_pylist() if has_job else [None] * data.num_rows
        counts = Counter(
            zip(data.column("recording_id").to_pylist(), jobs, data.column("run_id").to_pylist(), strict=True)
        )
        sources = tuple(
            FileSource(recording_id=rid, job_id=job, rows=n, run_id=run)
            for (rid, job, run), n in sorted(
                counts.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])
            )
        )
        files.append((loc.uri(f"{spec.name}/{rel}"), data.num_rows, sources))
    return TableCommit.of(
        table=spec.name,
        version=version,
        operation=operation,
        added=files,
        removed=[loc.uri(f"{spec.name}/{rel}") for rel in removed],
        written=written,
    )


# --------------------------------------------------------------------------- housekeeping


def compact(
    output_uri: str,
    *,
    tables: Iterable[DatasetTable] | None = None,
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
) -> list[TableCommit]:
    """Merge each partition's small files (`optimize.compact`), one commit per table that had
    any to merge; returns those commits for `repository.record_dataset_commit`."""
    loc = open_location(output_uri)
    out = []
    for spec in tables or DATASET_TABLES.values():
        delta = open_table(output_uri, spec)
        if delta is None:
            continue
        before = delta.version()
        metrics = delta.optimize.compact(target_size=target_file_bytes)
        if not metrics.get("numFilesRemoved"):
            continue
        delta.update_incremental()
        # One commit per table unless the compaction ran past `min_commit_interval` (it has none).
        for version in range(before + 1, delta.version() + 1):
            out.append(describe_commit(loc, spec, version, operation="compact"))
    return out


def vacuum(
    output_uri: str,
    *,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    tables: Iterable[DatasetTable] | None = None,
) -> list[str]:
    """Delete data files that no version newer than `retention_days` needs, and files no
    commit refers to (a dead writer's leftovers) once they are that old; returns their URIs.

    Reading a version older than the retention fails afterwards (its files are gone).
    """
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    deleted: list[str] = []
    for spec in tables or DATASET_TABLES.values():
        delta = open_table(output_uri, spec)
        if delta is None:
            continue
        # full=True: also files no log entry mentions, not only those removed since the last checkpoint.
        paths = delta.vacuum(
            retention_hours=int(retention_days * 24),
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
        )
        deleted += [f"{table_uri(output_uri, spec)}/{p}" for p in paths]
    if deleted:
        log.info(
            "vacuum of %s deleted %d file(s) older than %s day(s)", output_uri, len(deleted), retention_days
        )
    return deleted


# --------------------------------------------------------------------------- reading


def read_table(
    output_uri: str,
    table: str | DatasetTable,
    *,
    version: int | None = None,
    columns: list[str] | None = None,
    filter: Any = None,
) -> pa.Table:
    """The rows of one table (newest version, or as of `version`), with the declared schema
    (partition columns last). A table never written reads as empty."""
    spec = _table(table)
    delta = open_table(output_uri, spec, version=version)
    if delta is None:
        if version is not None:
            raise DatasetError(f"table {spec.name} has no version {version}: it was never written")
        data = spec.read_schema.empty_table()
        return data.select(columns) if columns else data
    try:
        data = delta.to_pyarrow_table(columns=columns, filters=filter)
    except FileNotFoundError as exc:
        if version is None:
            raise
        raise DatasetError(
            f"version {version} of {spec.name} can no longer be read: vacuum removed its files "
            f"(older than the retention): {exc}"
        ) from exc
    schema = spec.read_schema if columns is None else pa.schema([spec.read_schema.field(c) for c in columns])
    return data.select(schema.names).cast(schema)


def file_uris(output_uri: str, table: str | DatasetTable, *, version: int | None = None) -> list[str]:
    """The data files making up a version of the table (what lineage points at)."""
    delta = open_table(output_uri, _table(table), version=version)
    return [] if delta is None else list(delta.file_uris())


def table_version(output_uri: str, table: str | DatasetTable) -> int | None:
    delta = open_table(output_uri, _table(table))
    return None if delta is None else delta.version()


def history(output_uri: str, table: str | DatasetTable, limit: int | None = None) -> list[dict[str, Any]]:
    delta = open_table(output_uri, _table(table))
    return [] if delta is None else delta.history(limit)
