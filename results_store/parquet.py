"""The Parquet dataset: Hive-partitioned tables with a commit log, written once per run.

Layout under the output root (local folder or s3://bucket/prefix):

    emotion_segments/processing_date=2025-01-02/provider=valence/part-<uuid>.parquet
    prosody_utterances/... prosody_summary/... recordings/processing_date=.../part-<uuid>.parquet
    _staging/<txn>/<uuid>.parquet     files written but not yet committed (or being published)
    _log/00000000000000000042.json    commit 42: files added and removed
    _log/00000000000000000025.checkpoint.json   full file list after commit 25

How it stays correct:
  * Data files are first written under `_staging/`, outside every table folder, so a crash
    mid-write leaves nothing a reader of `<table>/` can see. (pyarrow's S3 stream *completes*
    the upload when an exception interrupts a write, so writing in place would publish a
    truncated file.)
  * A commit is one log entry, created only if absent (hard link locally, `If-None-Match: *` on
    S3). That is the commit point; two writers racing for the same version cannot both win, and
    the loser re-plans on top of the winner.
  * Re-processing replaces: a commit holding rows for recording R in table T also rewrites every
    earlier file of T holding R without R's rows (copy-on-write), in the same log entry.
  * After the commit point, files are published: superseded files are deleted *first*, then
    the staged files are moved into their partitions. A plain reader listing the folder during
    those moments may miss the rows being replaced, never sees them twice; `read_table` reads
    the exact committed file list. If the writer dies there, the next writer, `compact` or
    `recover` finishes the publish from the log (it is idempotent).
  * So the committed state and the files present in the table folders are the same; DuckDB's
    `read_parquet('<root>/<table>/**/*.parquet', hive_partitioning=true)` and
    `pyarrow.dataset` over a table folder are correct without knowing about the log.
  * Files are per run, table and partition (and every `max_buffered_rows`), not per recording;
    `compact` merges the small files of event-triggered runs into files of `target_file_rows`.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import json
import logging
import operator
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
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
from results_store.records import CommitResult, DataFileInfo, DatasetRows, FileSource, Relocation
from results_store.storage import Location, open_location

if TYPE_CHECKING:
    # Imported where used: ~16 MiB that a pipeline run's export does not otherwise load.
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

LOG_DIR = "_log"
STAGING_DIR = "_staging"
LOG_FORMAT = 1
CHECKPOINT_EVERY = 20
MAX_COMMIT_ATTEMPTS = 20
DEFAULT_MAX_BUFFERED_ROWS = 250_000
DEFAULT_TARGET_FILE_ROWS = 1_000_000
STAGING_RETENTION = dt.timedelta(hours=6)
"""Staged files older than this that no commit refers to are crash leftovers; `compact` deletes
them. Longer than any run's write-to-commit time."""
LOG_RETENTION = dt.timedelta(days=1)
"""Log entries older than the newest checkpoint are pruned once this old, long after any
writer could still be racing to create them."""
ROW_GROUP_ROWS = 256 * 1024


class DatasetError(RuntimeError):
    """The dataset's log or files are not in a state this code can work with."""


class PublishError(DatasetError):
    """The commit is durable (its log entry exists) but not all of its files were moved into
    place. Readers using the log already see it; the next writer, `compact` or `recover`
    finishes the publish. The staged files must be kept, so the writer does not abort."""


class CommitConflictError(DatasetError):
    """Other writers kept committing first; gave up after `MAX_COMMIT_ATTEMPTS`."""


# --------------------------------------------------------------------------- commit log


@dataclass(frozen=True)
class IdRanges:
    """A set of recording ids as sorted inclusive ranges: compact in the log, since a run's
    recordings mostly have consecutive ids."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, ids: Iterable[int]) -> IdRanges:
        out: list[tuple[int, int]] = []
        for i in sorted(set(ids)):
            if out and i == out[-1][1] + 1:
                out[-1] = (out[-1][0], i)
            else:
                out.append((i, i))
        return cls(tuple(out))

    def __contains__(self, item: int) -> bool:
        pos = bisect.bisect_right(self.ranges, (item, float("inf"))) - 1
        return pos >= 0 and self.ranges[pos][0] <= item <= self.ranges[pos][1]

    def intersects(self, ids: set[int], lo: int, hi: int) -> bool:
        """True if any of `ids` (whose min and max are `lo`, `hi`) is in this set."""
        if not self.ranges or hi < self.ranges[0][0] or lo > self.ranges[-1][1]:
            return False
        return any(i in self for i in ids)

    def __iter__(self) -> Iterator[int]:
        for start, end in self.ranges:
            yield from range(start, end + 1)


@dataclass(frozen=True)
class FileEntry:
    """A committed data file, as the log records it."""

    table: str
    path: str
    partition: dict[str, str]
    rows: int
    recording_ids: IdRanges
    schema_version: int
    staged: str | None = None
    """Where the file waits until published; only set in the entry that adds it."""

    def to_json(self) -> dict[str, Any]:
        out = {
            "table": self.table,
            "path": self.path,
            "partition": self.partition,
            "rows": self.rows,
            "recording_ids": [list(r) for r in self.recording_ids.ranges],
            "schema_version": self.schema_version,
        }
        if self.staged:
            out["staged"] = self.staged
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(
            table=data["table"],
            path=data["path"],
            partition=dict(data["partition"]),
            rows=int(data["rows"]),
            recording_ids=IdRanges(tuple((int(a), int(b)) for a, b in data["recording_ids"])),
            schema_version=int(data["schema_version"]),
            staged=data.get("staged"),
        )


@dataclass(frozen=True)
class LogEntry:
    version: int
    operation: str
    run_id: str
    committed_at: str
    add: tuple[FileEntry, ...]
    remove: tuple[str, ...]

    def to_bytes(self) -> bytes:
        body = {
            "format": LOG_FORMAT,
            "version": self.version,
            "operation": self.operation,
            "run_id": self.run_id,
            "committed_at": self.committed_at,
            "add": [f.to_json() for f in self.add],
            "remove": list(self.remove),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LogEntry:
        data = json.loads(raw)
        _check_format(data)
        return cls(
            version=int(data["version"]),
            operation=data["operation"],
            run_id=data["run_id"],
            committed_at=data["committed_at"],
            add=tuple(FileEntry.from_json(f) for f in data["add"]),
            remove=tuple(data["remove"]),
        )


def _check_format(data: dict[str, Any]) -> None:
    if data.get("format") != LOG_FORMAT:
        raise DatasetError(
            f"commit log format {data.get('format')} is not {LOG_FORMAT}: upgrade valence-pipeline"
        )


@dataclass
class Snapshot:
    """The committed state: every current data file, as of log `version` (0: empty dataset)."""

    version: int = 0
    files: dict[str, FileEntry] = field(default_factory=dict)
    head: LogEntry | None = None
    """The newest entry; the only one whose publish step may still be unfinished."""

    def table_files(self, table: str) -> list[FileEntry]:
        return sorted((f for f in self.files.values() if f.table == table), key=lambda f: f.path)

    def apply(self, entry: LogEntry) -> None:
        for path in entry.remove:
            self.files.pop(path, None)
        for added in entry.add:
            self.files[added.path] = dataclasses.replace(added, staged=None)
        self.version = entry.version


_LOG_NAME = re.compile(r"^(\d{20})(\.checkpoint)?\.json$")


def _log_rel(version: int, *, checkpoint: bool = False) -> str:
    return f"{LOG_DIR}/{version:020d}{'.checkpoint' if checkpoint else ''}.json"


def _log_versions(loc: Location) -> tuple[list[int], list[int]]:
    """Versions of the commit entries and of the checkpoints present in the log."""
    commits: list[int] = []
    checkpoints: list[int] = []
    for listed in loc.list(LOG_DIR):
        match = _LOG_NAME.match(listed.rel.rsplit("/", 1)[-1])
        if match:
            (checkpoints if match.group(2) else commits).append(int(match.group(1)))
    return commits, checkpoints


def head_version(loc: Location) -> int:
    """The newest committed version (0 for an empty dataset)."""
    return max(_log_versions(loc)[0], default=0)


def load_snapshot(loc: Location) -> Snapshot:
    """Replay the log from the newest checkpoint."""
    commits, checkpoints = _log_versions(loc)
    if not commits:
        return Snapshot()
    head = max(commits)
    base = max((c for c in checkpoints if c <= head), default=0)
    snap = _read_checkpoint(loc, base) if base else Snapshot()
    present = set(commits)
    entry: LogEntry | None = None
    for version in range(base + 1, head + 1):
        if version not in present:
            raise DatasetError(f"commit log has a gap: version {version} is missing under {loc.uri(LOG_DIR)}")
        entry = LogEntry.from_bytes(loc.read_bytes(_log_rel(version)))
        snap.apply(entry)
    snap.head = entry or LogEntry.from_bytes(loc.read_bytes(_log_rel(head)))
    return snap


def _read_checkpoint(loc: Location, version: int) -> Snapshot:
    data = json.loads(loc.read_bytes(_log_rel(version, checkpoint=True)))
    _check_format(data)
    files = (FileEntry.from_json(f) for f in data["files"])
    return Snapshot(version=int(data["version"]), files={f.path: f for f in files})


def _write_checkpoint(loc: Location, snap: Snapshot) -> None:
    body = {
        "format": LOG_FORMAT,
        "version": snap.version,
        "files": [f.to_json() for f in snap.files.values()],
    }
    loc.write_bytes(_log_rel(snap.version, checkpoint=True), json.dumps(body, separators=(",", ":")).encode())


def publish(loc: Location, entry: LogEntry) -> None:
    """Make the folder match a committed entry. Idempotent: safe to repeat after a crash.

    Removed files go first, so a reader listing the folder meanwhile can miss rows that are
    being replaced but never sees two copies of them.
    """
    for path in entry.remove:
        loc.delete(path)
    for added in entry.add:
        if added.staged and loc.exists(added.staged):
            try:
                loc.move(added.staged, added.path)
            except OSError:
                # Another process finishing the same publish may have moved it first.
                if not loc.exists(added.path):
                    raise
        elif not loc.exists(added.path):
            if head_version(loc) > entry.version:
                # A later commit removed it. Its writer published this entry in full before
                # committing, so there is nothing left to do here.
                return
            raise DatasetError(f"commit {entry.version}: {added.path} is neither staged nor published")


def recover(output_uri: str) -> int:
    """Finish publishing the newest commit if its writer died mid-publish; returns its version."""
    loc = open_location(output_uri)
    snap = load_snapshot(loc)
    if snap.head is not None:
        publish(loc, snap.head)
    return snap.version


# --------------------------------------------------------------------------- Arrow conversion


def _file_name() -> str:
    return f"part-{uuid.uuid4().hex}.parquet"


def _partition_dir(table: DatasetTable, partition: dict[str, str]) -> str:
    return "/".join([table.name, *(f"{name}={partition[name]}" for name in table.partition_by)])


def records_to_arrow(table: DatasetTable, rows: Sequence[Any], run_id: str) -> pa.Table:
    """Typed records to a table with exactly the declared file schema (run id stamped)."""
    columns: list[pa.Array] = []
    for fld in table.schema:
        if fld.name == "run_id":
            columns.append(pa.array([run_id] * len(rows), type=fld.type))
        else:
            getter = operator.attrgetter(fld.name)
            columns.append(pa.array([getter(r) for r in rows], type=fld.type))
    return pa.Table.from_arrays(columns, schema=table.file_schema)


def _sort_keys(table: DatasetTable) -> list[tuple[str, str]]:
    names = table.schema.names
    keys = ["recording_id", "provider_job_id", "segment_index", "utterance_index"]
    return [(k, "ascending") for k in keys if k in names]


def _in_order(data: pa.Table, table: DatasetTable) -> bool:
    """Whether rows already follow the sort keys (as `dataset_rows` returns them): sorting
    copies the whole table (~10 MiB more at the export's peak for a 9 h recording)."""
    keys = [np.asarray(data.column(name).to_numpy(zero_copy_only=False)) for name, _ in _sort_keys(table)]
    if data.num_rows < 2 or not keys:
        return True
    order = np.lexsort(keys[::-1])
    return bool(np.array_equal(order, np.arange(data.num_rows)))


def _write_parquet(loc: Location, rel: str, data: pa.Table) -> None:
    loc.prepare_parent(rel)
    pq.write_table(data, loc.path(rel), filesystem=loc.fs, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _read_file(loc: Location, rel: str, table: DatasetTable) -> pa.Table:
    return pq.read_table(loc.path(rel), filesystem=loc.fs, schema=table.file_schema)


# --------------------------------------------------------------------------- planning commits


@dataclass
class _Staged:
    """A data file written under `_staging/`, waiting for a commit."""

    table: DatasetTable
    staged: str
    final: str
    partition: dict[str, str]
    rows: int
    recording_ids: IdRanges
    sources: tuple[FileSource, ...] = ()
    owners: dict[tuple[int, ...], int] = field(default_factory=dict)

    def entry(self) -> FileEntry:
        return FileEntry(
            table=self.table.name,
            path=self.final,
            partition=self.partition,
            rows=self.rows,
            recording_ids=self.recording_ids,
            schema_version=self.table.version,
            staged=self.staged,
        )


@dataclass
class _Plan:
    """One commit attempt: files to add (new and rewritten) and files to remove."""

    add: list[_Staged] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    relocated: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    """Staged rewrites made for this attempt only; deleted if the attempt loses the race."""

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def _stage(
    loc: Location, txn: str, table: DatasetTable, partition: dict[str, str], data: pa.Table
) -> _Staged:
    if not _in_order(data, table):
        data = data.sort_by(_sort_keys(table))
    staged = f"{STAGING_DIR}/{txn}/{uuid.uuid4().hex}.parquet"
    _write_parquet(loc, staged, data)
    ids = data.column("recording_id").to_pylist()
    return _Staged(
        table=table,
        staged=staged,
        final=f"{_partition_dir(table, partition)}/{_file_name()}",
        partition=partition,
        rows=data.num_rows,
        recording_ids=IdRanges.of(ids),
    )


def _commit(
    loc: Location, *, run_id: str, operation: str, plan_for: Callable[[Snapshot, _Plan], None]
) -> tuple[LogEntry, _Plan] | None:
    """Plan on the latest snapshot and try to claim the next log version; re-plan on conflict."""
    for attempt in range(MAX_COMMIT_ATTEMPTS):
        snap = load_snapshot(loc)
        if snap.head is not None:
            publish(loc, snap.head)  # a crashed writer's publish step, finished before building on it
        plan = _Plan()
        try:
            plan_for(snap, plan)
        except OSError:
            _discard(loc, plan)
            if head_version(loc) == snap.version:
                raise
            # A file of this snapshot was rewritten away by a commit made meanwhile.
            log.info("dataset changed while planning commit %d; re-planning", snap.version + 1)
            _pause(attempt)
            continue
        if plan.empty:
            return None
        entry = LogEntry(
            version=snap.version + 1,
            operation=operation,
            run_id=run_id,
            committed_at=dt.datetime.now(dt.UTC).isoformat(),
            add=tuple(s.entry() for s in plan.add),
            remove=tuple(plan.remove),
        )
        if loc.create_exclusive(_log_rel(entry.version), entry.to_bytes()):
            try:
                publish(loc, entry)
            except Exception as exc:
                raise PublishError(
                    f"commit {entry.version} to {loc.uri('')} is durable but not fully published: {exc}; "
                    "`results_store.parquet.recover` (or the next commit) finishes it"
                ) from exc
            snap.apply(entry)
            if entry.version % CHECKPOINT_EVERY == 0:
                _write_checkpoint(loc, snap)
            log.info(
                "dataset %s commit %d (%s, run %s): +%d files, -%d files",
                loc.uri(""), entry.version, operation, run_id, len(entry.add), len(entry.remove),
            )  # fmt: skip
            return entry, plan
        _discard(loc, plan)
        log.info(
            "dataset commit %d taken by another writer; re-planning (attempt %d)", entry.version, attempt + 1
        )
        _pause(attempt)
    raise CommitConflictError(f"could not commit to {loc.uri('')} after {MAX_COMMIT_ATTEMPTS} attempts")


def _discard(loc: Location, plan: _Plan) -> None:
    for rel in plan.scratch:
        loc.delete(rel)


def _pause(attempt: int) -> None:
    time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))


def _supersede(loc: Location, txn: str, snap: Snapshot, new_files: Sequence[_Staged], plan: _Plan) -> None:
    """Plan a write: the new files, plus every current file of the same table that holds one of
    the new files' recordings, rewritten without that recording's rows."""
    plan.add.extend(new_files)
    by_table: dict[str, set[int]] = {}
    for staged in new_files:
        by_table.setdefault(staged.table.name, set()).update(staged.recording_ids)
    for name, ids in by_table.items():
        table = DATASET_TABLES[name]
        lo, hi = min(ids), max(ids)
        for current in snap.table_files(name):
            if current.recording_ids.intersects(ids, lo, hi):
                _rewrite_without(loc, txn, table, current, ids, plan)


def _rewrite_without(
    loc: Location, txn: str, table: DatasetTable, current: FileEntry, ids: set[int], plan: _Plan
) -> None:
    import pyarrow.compute as pc

    data = _read_file(loc, current.path, table)
    drop = pc.is_in(data.column("recording_id"), value_set=pa.array(sorted(ids), pa.int64()))
    kept = data.filter(pc.invert(drop))
    plan.remove.append(current.path)
    if kept.num_rows == 0:
        return
    rewritten = _stage(loc, txn, table, current.partition, kept)
    plan.add.append(rewritten)
    plan.scratch.append(rewritten.staged)
    plan.relocated.append((current.path, rewritten.final, tuple(rewritten.recording_ids)))


def _result(loc: Location, run_id: str, committed: tuple[LogEntry, _Plan] | None) -> CommitResult:
    if committed is None:
        return CommitResult(version=None, run_id=run_id)
    entry, plan = committed
    rewritten = {final for _old, final, _ids in plan.relocated}
    added = tuple(
        DataFileInfo(table=s.table.name, uri=loc.uri(s.final), rows=s.rows, sources=s.sources)
        for s in plan.add
        if s.final not in rewritten
    )
    return CommitResult(
        version=entry.version,
        run_id=run_id,
        added=added,
        relocated=tuple(Relocation(loc.uri(old), loc.uri(new), ids) for old, new, ids in plan.relocated),
        removed=tuple(loc.uri(p) for p in plan.remove),
    )


# --------------------------------------------------------------------------- the writer


@dataclass
class _Buffer:
    chunks: list[tuple[int, list[Any]]] = field(default_factory=list)
    rows: int = 0


def _owner_key(record: Any) -> tuple[int, ...]:
    """Within one run, rows re-added for the same recording (and job) replace earlier ones."""
    job = getattr(record, "provider_job_id", None)
    return (record.recording_id,) if job is None else (record.recording_id, job)


class DatasetWriter:
    """Buffers one run's rows and commits them to the dataset in one log entry.

    Use one writer per run: add rows as recordings finish, then `commit()` once. Memory is
    bounded: a table's buffer is written to a staged file whenever it reaches
    `max_buffered_rows`, so at most 4 x `max_buffered_rows` rows are held (one buffer per
    table), and a run produces about rows / `max_buffered_rows` + 1 files per table and
    partition, not one per recording. Nothing is visible to readers before `commit()`.

    Rows for a recording replace that recording's rows from earlier commits in the same table;
    within the run, re-adding the rows of a recording's job replaces the earlier ones.

    As a context manager it commits on a clean exit and discards everything on an exception.
    """

    def __init__(
        self,
        output_uri: str,
        run_id: str,
        *,
        processing_date: dt.date | None = None,
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
    ) -> None:
        if max_buffered_rows < 1:
            raise ValueError("max_buffered_rows must be positive")
        self.output_uri = output_uri
        self.run_id = run_id
        self.processing_date = processing_date or dt.datetime.now(dt.UTC).date()
        self.max_buffered_rows = max_buffered_rows
        self.result: CommitResult | None = None
        self._loc = open_location(output_uri)
        self._txn = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)[:64]}-{uuid.uuid4().hex[:12]}"
        self._buffers: dict[str, _Buffer] = {name: _Buffer() for name in DATASET_TABLES}
        self._owners: dict[str, dict[tuple[int, ...], int]] = {name: {} for name in DATASET_TABLES}
        self._staged: list[_Staged] = []
        self._generation = 0
        self._closed = False
        # A previous run that died after its commit point may have left files unpublished;
        # finishing that now makes plain readers whole again at the start of the next run.
        snap = load_snapshot(self._loc)
        if snap.head is not None:
            publish(self._loc, snap.head)

    # -- adding rows

    def add_recordings(self, rows: Iterable[RecordingRecord]) -> None:
        self._add(RECORDINGS_TABLE, rows)

    def add_emotion_segments(self, rows: Iterable[EmotionSegmentRecord]) -> None:
        self._add(EMOTION_SEGMENTS_TABLE, rows)

    def add_prosody(
        self, summaries: Iterable[ProsodySummaryRecord], utterances: Iterable[ProsodyUtteranceRecord] = ()
    ) -> None:
        self._add(PROSODY_SUMMARY_TABLE, summaries)
        self._add(PROSODY_UTTERANCES_TABLE, utterances)

    def add(self, rows: DatasetRows) -> None:
        """All four tables at once, e.g. `repository.dataset_rows(...)` for finished recordings."""
        self.add_recordings(rows.recordings)
        self.add_emotion_segments(rows.emotion_segments)
        self.add_prosody(rows.prosody_summaries, rows.prosody_utterances)

    def _add(self, table: DatasetTable, rows: Iterable[Any]) -> None:
        self._check_open()
        batch = list(rows)
        if not batch:
            return
        wrong = next((r for r in batch if not isinstance(r, table.record)), None)
        if wrong is not None:
            raise TypeError(f"{table.name} takes {table.record.__name__}, got {type(wrong).__name__}")
        self._generation += 1
        owners = self._owners[table.name]
        for key in {_owner_key(r) for r in batch}:
            owners[key] = self._generation
        buffer = self._buffers[table.name]
        buffer.chunks.append((self._generation, batch))
        buffer.rows += len(batch)
        if buffer.rows >= self.max_buffered_rows:
            self._flush(table)

    # -- staging

    def _flush(self, table: DatasetTable) -> None:
        """Write the table's buffered rows to staged files, one per partition."""
        buffer = self._buffers[table.name]
        owners = self._owners[table.name]
        live = [r for gen, chunk in buffer.chunks for r in chunk if owners[_owner_key(r)] == gen]
        self._buffers[table.name] = _Buffer()
        groups: dict[tuple[str, ...], list[Any]] = {}
        for row in live:
            groups.setdefault(tuple(getattr(row, p) for p in table.row_partition_fields), []).append(row)
        for values, rows in groups.items():
            partition = {"processing_date": self.processing_date.isoformat()}
            partition.update(zip(table.row_partition_fields, values, strict=True))
            partition = {name: partition[name] for name in table.partition_by}
            staged = _stage(
                self._loc, self._txn, table, partition, records_to_arrow(table, rows, self.run_id)
            )
            counts = Counter((r.recording_id, getattr(r, "provider_job_id", None)) for r in rows)
            ordered = sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
            staged.sources = tuple(FileSource(rid, job, n) for (rid, job), n in ordered)
            staged.owners = {key: owners[key] for key in {_owner_key(r) for r in rows}}
            self._staged.append(staged)

    def _drop_replaced(self) -> None:
        """Staged files holding rows that a later `add` in this run replaced are rewritten."""
        kept: list[_Staged] = []
        for staged in self._staged:
            owners = self._owners[staged.table.name]
            stale = {key for key, gen in staged.owners.items() if owners[key] != gen}
            if not stale:
                kept.append(staged)
                continue
            data = _read_file(self._loc, staged.staged, staged.table)
            self._loc.delete(staged.staged)
            mask = [key not in stale for key in _row_keys(data)]
            rest = data.filter(pa.array(mask, pa.bool_()))
            if rest.num_rows:
                fresh = _stage(self._loc, self._txn, staged.table, staged.partition, rest)
                fresh.sources = tuple(s for s in staged.sources if _source_key(s) not in stale)
                fresh.owners = {k: g for k, g in staged.owners.items() if k not in stale}
                kept.append(fresh)
        self._staged = kept

    # -- committing

    def commit(self) -> CommitResult:
        """Publish every row added since the writer was made, atomically, in one log entry.

        Returns what changed (file URIs and the (recording, job) rows in each, for lineage);
        pass it to `repository.record_parquet_commit`.
        """
        self._check_open()
        try:
            for table in DATASET_TABLES.values():
                self._flush(table)
            self._drop_replaced()
            new_files = list(self._staged)
            committed = (
                _commit(
                    self._loc,
                    run_id=self.run_id,
                    operation="write",
                    plan_for=lambda snap, plan: _supersede(self._loc, self._txn, snap, new_files, plan),
                )
                if new_files
                else None
            )
        except PublishError:
            self._closed = True  # committed: the staged files belong to the log now
            raise
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._loc.remove_empty_dirs(f"{STAGING_DIR}/{self._txn}")
        self.result = _result(self._loc, self.run_id, committed)
        return self.result

    def abort(self) -> None:
        """Discard buffered and staged rows; nothing of this writer becomes visible."""
        self._closed = True
        self._buffers = {name: _Buffer() for name in DATASET_TABLES}
        self._staged = []
        # Everything under this writer's staging prefix, including a file half-written when
        # the error struck.
        for leftover in self._loc.list(f"{STAGING_DIR}/{self._txn}", recursive=True):
            self._loc.delete(leftover.rel)
        self._loc.remove_empty_dirs(f"{STAGING_DIR}/{self._txn}")

    def compact(self, *, target_file_rows: int = DEFAULT_TARGET_FILE_ROWS) -> CommitResult:
        """Compact the dataset this writer writes to (see `compact`)."""
        return compact(self.output_uri, run_id=self.run_id, target_file_rows=target_file_rows)

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


def _row_keys(data: pa.Table) -> list[tuple[int, ...]]:
    """`_owner_key` of each row of a staged file."""
    rids = data.column("recording_id").to_pylist()
    if "provider_job_id" not in data.column_names:
        return [(rid,) for rid in rids]
    return list(zip(rids, data.column("provider_job_id").to_pylist(), strict=True))


def _source_key(source: FileSource) -> tuple[int, ...]:
    return (source.recording_id,) if source.job_id is None else (source.recording_id, source.job_id)


# --------------------------------------------------------------------------- compaction


def compact(
    output_uri: str,
    *,
    run_id: str = "compaction",
    target_file_rows: int = DEFAULT_TARGET_FILE_ROWS,
    now: dt.datetime | None = None,
) -> CommitResult:
    """Merge each partition's small files into files of up to `target_file_rows` rows, in one
    commit; then delete crash leftovers in `_staging/` and log entries the newest checkpoint
    made redundant. Returns the relocations for `repository.record_parquet_commit`."""
    loc = open_location(output_uri)
    txn = f"compact-{uuid.uuid4().hex[:12]}"
    committed = _commit(
        loc,
        run_id=run_id,
        operation="compact",
        plan_for=lambda snap, plan: _merge_small(loc, txn, snap, target_file_rows, plan),
    )
    loc.remove_empty_dirs(f"{STAGING_DIR}/{txn}")
    now = now or dt.datetime.now(dt.UTC)
    _vacuum(loc, now)
    return _result(loc, run_id, committed)


def _merge_small(loc: Location, txn: str, snap: Snapshot, target_rows: int, plan: _Plan) -> None:
    for table in DATASET_TABLES.values():
        by_partition: dict[str, list[FileEntry]] = {}
        for entry in snap.table_files(table.name):
            if entry.rows < target_rows:
                by_partition.setdefault(_partition_dir(table, entry.partition), []).append(entry)
        for small in by_partition.values():
            for group in _bins(small, target_rows):
                if len(group) > 1:
                    _merge(loc, txn, table, group, plan)


def _bins(files: list[FileEntry], target_rows: int) -> list[list[FileEntry]]:
    """Greedy first-fit in path order: groups whose rows add up to at most `target_rows`."""
    groups: list[list[FileEntry]] = []
    current: list[FileEntry] = []
    rows = 0
    for entry in files:
        if current and rows + entry.rows > target_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(entry)
        rows += entry.rows
    if current:
        groups.append(current)
    return groups


def _merge(loc: Location, txn: str, table: DatasetTable, group: list[FileEntry], plan: _Plan) -> None:
    merged = pa.concat_tables([_read_file(loc, entry.path, table) for entry in group])
    staged = _stage(loc, txn, table, group[0].partition, merged)
    plan.add.append(staged)
    plan.scratch.append(staged.staged)
    for entry in group:
        plan.remove.append(entry.path)
        plan.relocated.append((entry.path, staged.final, tuple(entry.recording_ids)))


def _vacuum(loc: Location, now: dt.datetime) -> None:
    snap = load_snapshot(loc)
    pending = {f.staged for f in snap.head.add if f.staged} if snap.head else set()
    for leftover in loc.list(STAGING_DIR, recursive=True):
        if leftover.rel not in pending and _older_than(leftover.mtime, now, STAGING_RETENTION):
            log.info("deleting abandoned staged file %s", loc.uri(leftover.rel))
            loc.delete(leftover.rel)
    loc.remove_empty_dirs(STAGING_DIR)
    log_files = [(e, _LOG_NAME.match(e.rel.rsplit("/", 1)[-1])) for e in loc.list(LOG_DIR)]
    named = [(e, int(m.group(1)), bool(m.group(2))) for e, m in log_files if m]
    newest_checkpoint = max((v for _e, v, is_checkpoint in named if is_checkpoint), default=0)
    for entry, version, _is_checkpoint in named:
        if version < newest_checkpoint and _older_than(entry.mtime, now, LOG_RETENTION):
            loc.delete(entry.rel)


def _older_than(mtime: dt.datetime | None, now: dt.datetime, age: dt.timedelta) -> bool:
    if mtime is None:
        return False
    stamp = mtime if mtime.tzinfo else mtime.replace(tzinfo=dt.UTC)
    return now - stamp > age


# --------------------------------------------------------------------------- reading


def dataset(output_uri: str, table: str) -> ds.Dataset:
    """The current rows of `table` as a lazy `pyarrow.dataset` over exactly the committed files
    (DuckDB can query it directly: `duckdb.sql("select ... from ds")`)."""
    import pyarrow.dataset as ds

    spec = _table(table)
    loc = open_location(output_uri)
    snap = load_snapshot(loc)
    files = snap.table_files(table)
    pending = {f.path: f.staged for f in snap.head.add if f.staged} if snap.head else {}
    paths = []
    for entry in files:
        staged = pending.get(entry.path)
        # Only the newest commit can be mid-publish; its files may still sit in staging.
        rel = staged if staged and not loc.exists(entry.path) else entry.path
        paths.append(loc.path(rel))
    partitions = [_partition_expression(spec, entry.partition) for entry in files]
    return ds.FileSystemDataset.from_paths(
        paths,
        schema=spec.read_schema,
        format=ds.ParquetFileFormat(),
        filesystem=loc.fs,
        partitions=partitions,
    )


READ_ATTEMPTS = 3


def read_table(
    output_uri: str, table: str, *, columns: list[str] | None = None, filter: Any = None
) -> pa.Table:
    """The current rows of one table (`emotion_segments`, `prosody_utterances`,
    `prosody_summary`, `recordings`), partition columns included."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return dataset(output_uri, table).to_table(columns=columns, filter=filter)
        except FileNotFoundError:
            # A commit published between listing the log and reading: read the new snapshot.
            if attempt == READ_ATTEMPTS - 1:
                raise
            log.debug("dataset changed while reading %s; retrying", table)
    raise AssertionError("unreachable")


def _partition_expression(spec: DatasetTable, partition: dict[str, str]) -> ds.Expression:
    import pyarrow.dataset as ds

    expr: ds.Expression | None = None
    for name in spec.partition_by:
        value: Any = partition[name]
        if name == "processing_date":
            value = pa.scalar(dt.date.fromisoformat(value), pa.date32())
        term = ds.field(name) == value
        expr = term if expr is None else expr & term
    assert expr is not None
    return expr


def _table(name: str) -> DatasetTable:
    try:
        return DATASET_TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; one of {sorted(DATASET_TABLES)}") from None


def table_uri(output_uri: str, table: str) -> str:
    """The folder a plain Hive reader (DuckDB, Spark, pyarrow) should point at for `table`."""
    return open_location(output_uri).uri(_table(table).name)
