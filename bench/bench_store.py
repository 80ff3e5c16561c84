"""Write N emotion-timeline rows through the results store and print rows/s per target.

    .venv/bin/python bench/bench_store.py                 # 1,000,000 rows
    .venv/bin/python bench/bench_store.py --rows 100000   # scaled down

Targets, side by side in one run: plain Parquet (the peer: the rows converted to Arrow and
written by `pyarrow.parquet.write_table`, no table format), the Delta dataset (one
`DatasetWriter` for the whole run into a new table, then the same run again, where every row
is an update), local folder; SQLite (a temporary file) and PostgreSQL (a throwaway schema in
$VALENCE_PIPELINE_TEST_POSTGRES_URL, default the local `test` database; reported as skipped
if unreachable). Rows go through the calls the pipeline makes: `save_timelines` for
`--jobs-per-transaction` provider jobs per transaction (COPY on PostgreSQL, executemany on
SQLite), and `DatasetWriter.add_emotion_segments` per recording then one `commit()` (replacing the run's recordings' rows). Only those calls are
timed; building the input rows is not. Each target's row count is read back and checked. The
Parquet and Delta targets share the record -> Arrow conversion (most of their time); their notes
give the write or the commit alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from results_store import dataset, db
from results_store import repository as repo
from results_store.models import (
    EMOTION_SEGMENTS_TABLE,
    EmotionSegmentRecord,
    EmotionSegmentRow,
    JobStatus,
    Provider,
    RunTrigger,
)
from results_store.records import JobIn, RecordingIn, RunStart
from valence_client.models import VALENCE_MODELS, EmotionSegment

log = logging.getLogger("bench_store")
RUN_ID = "bench-run"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Outcome:
    target: str
    rows: int
    seconds: float | None
    note: str = ""

    @property
    def rate(self) -> str:
        return "-" if not self.seconds else f"{self.rows / self.seconds:,.0f}"


def _labels() -> tuple[str, ...]:
    return VALENCE_MODELS["4emotions"]


def segments(n: int, rng: random.Random) -> list[EmotionSegment]:
    out = []
    for i in range(n):
        preds = dict(zip(_labels(), (rng.random() for _ in _labels()), strict=True))
        top = max(preds, key=preds.__getitem__)
        out.append(
            EmotionSegment(
                start_s=i * 5.0,
                end_s=i * 5.0 + 5.0,
                emotion=top,
                confidence=preds[top],
                all_predictions=preds,
            )
        )
    return out


def segment_records(recording: int, n: int, rng: random.Random) -> list[EmotionSegmentRecord]:
    return [
        EmotionSegmentRecord(
            recording_id=recording,
            source_uri=f"s3://bench/call-{recording}.wav",
            source_version=f"v{recording}",
            provider_job_id=recording,
            external_job_id=f"req-{recording}",
            model="4emotions",
            channel=None,
            segment_index=index,
            start_s=seg.start_s,
            end_s=seg.end_s,
            emotion=seg.emotion,
            confidence=seg.confidence,
            all_predictions=seg.all_predictions,
        )
        for index, seg in enumerate(segments(n, rng))
    ]


# --------------------------------------------------------------------------- dataset


def bench_delta(recordings: int, per_recording: int, workdir: Path) -> list[Outcome]:
    """The dataset writer: one `DatasetWriter` per run, rows added per recording, one commit
    (replacing the rows of the run's recordings); then the same run again, where every row is replaced."""
    root = str(workdir / "delta")
    outcomes = []
    for target in ("delta", "delta-rerun"):
        rng = random.Random(1)
        writer = dataset.DatasetWriter(root, RUN_ID)
        elapsed = 0.0
        for rid in range(1, recordings + 1):
            rows = segment_records(rid, per_recording, rng)
            start = time.perf_counter()
            writer.add_emotion_segments(rows)
            elapsed += time.perf_counter() - start
        start = time.perf_counter()
        result = writer.commit()
        committing = time.perf_counter() - start
        elapsed += committing
        written = dataset.read_table(root, "emotion_segments", columns=["recording_id"]).num_rows
        _check(written, recordings * per_recording, target)
        files = sum(len(t.added) for t in result.tables)
        outcomes.append(
            Outcome(
                target,
                written,
                elapsed,
                f"version {result.versions['emotion_segments']}, {files} file(s), commit {committing:.2f} s",
            )
        )
    # One more small run (an upload event's worth) into the now large table: the cost of a
    # run's commit once the table is large (it reads only files that can hold its recordings).
    rng = random.Random(2)
    small = max(1, recordings // 1000)
    writer = dataset.DatasetWriter(root, "bench-small-run")
    rows = [
        r
        for rid in range(recordings + 1, recordings + 1 + small)
        for r in segment_records(rid, per_recording, rng)
    ]
    start = time.perf_counter()
    writer.add_emotion_segments(rows)
    writer.commit()
    elapsed = time.perf_counter() - start
    total = dataset.read_table(root, "emotion_segments", columns=["recording_id"]).num_rows
    _check(total, (recordings + small) * per_recording, "delta-small")
    outcomes.append(Outcome("delta-small", len(rows), elapsed, "one more run into the table above"))
    return outcomes


def _warm_up() -> None:
    """Imports and first-call costs (pyarrow kernels, delta-rs) paid before any timing, so they
    do not land on whichever target runs first."""
    import deltalake  # noqa: F401 - imported for its load time

    rows = segment_records(0, 3, random.Random(0))
    dataset.records_to_arrow(EMOTION_SEGMENTS_TABLE, rows, RUN_ID, dt.date(2025, 1, 1))


def bench_plain_parquet(recordings: int, per_recording: int, workdir: Path) -> Outcome:
    """The peer: the same rows converted the same way, written by plain `pq.write_table` into a
    Hive partition folder (what the dataset writer did before Delta, minus its commit log)."""
    rng = random.Random(1)
    spec = EMOTION_SEGMENTS_TABLE
    today = dt.datetime.now(dt.UTC).date()
    chunks = []
    elapsed = 0.0
    for rid in range(1, recordings + 1):
        rows = segment_records(rid, per_recording, rng)
        start = time.perf_counter()
        chunks.append(dataset.records_to_arrow(spec, rows, RUN_ID, today))
        elapsed += time.perf_counter() - start
    start = time.perf_counter()
    data = pa.concat_tables(chunks).select(spec.schema.names)
    writing_start = time.perf_counter()
    folder = workdir / "parquet" / spec.name / f"processing_date={today}" / "provider=valence"
    folder.mkdir(parents=True)
    path = folder / f"part-{uuid.uuid4().hex}.parquet"
    pq.write_table(data, path, compression="zstd", row_group_size=dataset.ROW_GROUP_ROWS)
    elapsed += time.perf_counter() - start
    writing = time.perf_counter() - writing_start
    written = pq.read_metadata(path).num_rows
    _check(written, recordings * per_recording, "parquet")
    return Outcome("parquet", written, elapsed, f"1 file, no log, write {writing:.2f} s")


# --------------------------------------------------------------------------- databases


def bench_database(name: str, url: str, recordings: int, per_recording: int, jobs_per_tx: int) -> Outcome:
    db.upgrade(url)
    store = db.Store(url)
    try:
        job_ids = _prepare_jobs(store, recordings)
        rng = random.Random(1)
        elapsed = 0.0
        for start_index in range(0, len(job_ids), jobs_per_tx):
            batch = [
                (job, segments(per_recording, rng))
                for job in job_ids[start_index : start_index + jobs_per_tx]
            ]
            start = time.perf_counter()
            with store.session_scope() as s:
                repo.save_timelines(s, dict(batch), flow_run_id=RUN_ID)
            elapsed += time.perf_counter() - start
        with store.session_scope() as s:
            written = int(s.execute(sa.select(sa.func.count()).select_from(EmotionSegmentRow)).scalar_one())
        _check(written, recordings * per_recording, name)
        return Outcome(name, written, elapsed)
    finally:
        store.dispose()


def _prepare_jobs(store: db.Store, recordings: int) -> list[int]:
    """Recordings and one completed Valence job each (not timed: not timeline rows)."""
    with store.session_scope() as s:
        repo.start_run(s, RunStart(RUN_ID, RunTrigger.MANUAL, code_version="bench", settings_hash="bench"))
        refs = repo.upsert_recordings(
            s,
            [
                RecordingIn(bucket="bench", key=f"call-{i}.wav", etag=f"{i:032x}", size_bytes=1)
                for i in range(recordings)
            ],
        )
        jobs = [
            repo.upsert_provider_job(
                s, JobIn(ref.id, Provider.VALENCE, "4emotions", f"req-{ref.id}", status=JobStatus.COMPLETED)
            )
            for ref in refs
        ]
    return jobs


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema, dropped afterwards; the URL routes every connection into it."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in base_url else "?"
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _postgres_reachable(url: str) -> str | None:
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available": reported, not fatal
        return str(exc).splitlines()[0]


def _check(found: int, expected: int, target: str) -> None:
    if found != expected:
        raise SystemExit(f"{target}: wrote {found} rows, expected {expected}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="timeline rows to write (default 1,000,000)"
    )
    parser.add_argument(
        "--segments-per-recording", type=int, default=100, help="rows per recording/job (100)"
    )
    parser.add_argument(
        "--jobs-per-transaction", type=int, default=50, help="jobs saved per DB transaction (50)"
    )
    parser.add_argument(
        "--postgres-url", default=os.environ.get("VALENCE_PIPELINE_TEST_POSTGRES_URL", DEFAULT_PG)
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    per = max(1, min(args.segments_per_recording, args.rows))
    recordings = max(1, args.rows // per)
    total = recordings * per
    print(
        f"timeline rows: {total:,} ({recordings:,} recordings x {per} segments), started {dt.datetime.now():%H:%M:%S}"
    )
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        workdir = Path(tmp)
        _warm_up()
        outcomes.append(bench_plain_parquet(recordings, per, workdir))
        outcomes.extend(bench_delta(recordings, per, workdir))
        sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
        outcomes.append(bench_database("sqlite", sqlite_url, recordings, per, args.jobs_per_transaction))
        if args.skip_postgres:
            outcomes.append(Outcome("postgresql", 0, None, "skipped (--skip-postgres)"))
        elif (problem := _postgres_reachable(args.postgres_url)) is not None:
            outcomes.append(Outcome("postgresql", 0, None, f"skipped: {problem}"))
        else:
            with postgres_schema(args.postgres_url) as pg_url:
                outcomes.append(
                    bench_database("postgresql", pg_url, recordings, per, args.jobs_per_transaction)
                )
    print(f"{'target':<12} {'rows':>12} {'seconds':>9} {'rows/s':>12}  note")
    for o in outcomes:
        seconds = "-" if o.seconds is None else f"{o.seconds:.2f}"
        print(f"{o.target:<12} {o.rows:>12,} {seconds:>9} {o.rate:>12}  {o.note}".rstrip())
    by_target = {o.target: o for o in outcomes}
    peer, delta = by_target["parquet"], by_target["delta"]
    if peer.seconds and delta.seconds:
        print(
            f"delta / plain parquet writes per second: {peer.seconds / delta.seconds:.2f}x (target >= 0.8x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
