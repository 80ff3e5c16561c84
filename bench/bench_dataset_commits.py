"""A night's dataset commits one after another in one process: time and memory per commit.

    .venv/bin/python bench/bench_dataset_commits.py                       # 16 commits of 250
    .venv/bin/python bench/bench_dataset_commits.py --commits 8 --recordings 500

The run's dataset child writes a long night as successive commits of `EXPORT_CHUNK`
recordings (each recording: one `recordings` row and its timeline rows), into tables that
already hold the earlier commits. Side by side, each in a fresh child process on a fresh local
table:

- ours: `DatasetWriter.commit()`, one predicate overwrite per table (`replaceWhere` on the
  commit's `recording_id` range, reading only the files that can hold those recordings);
- peer: the same commits as a delta-rs `merge` on the natural key that also deletes the
  recordings' stale rows (`when_not_matched_by_source_delete`), what the writer did before.

Prints per approach the first and last commit's seconds and the process's RSS after its first
and after its last commit (`VmRSS`, after `malloc_trim`, with Arrow's system allocator, as in
the dataset child), then the ratios. Checks that each ends with every row exactly once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere
sys.path.insert(0, str(REPO / "bench"))

SEGMENTS_PER_RECORDING = 30


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peer_merge(output_uri: str, loc: Any, spec: Any, data: Any, run_id: str) -> Any:
    """The peer: a merge on the natural key, deleting the recordings' rows the source lacks."""
    from deltalake import WriterProperties

    from results_store import dataset

    ids = sorted(set(data.column("recording_id").to_pylist()))
    predicate = " AND ".join(
        f"t.{n} IS NOT DISTINCT FROM s.{n}" if spec.read_schema.field(n).nullable else f"t.{n} = s.{n}"
        for n in spec.row_key
    )
    delta = dataset._open_or_create(output_uri, spec)
    (
        delta.merge(
            data,
            predicate,
            source_alias="s",
            target_alias="t",
            writer_properties=WriterProperties(compression="ZSTD", max_row_group_size=dataset.ROW_GROUP_ROWS),
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .when_not_matched_by_source_delete(f"t.recording_id IN ({', '.join(map(str, ids))})")
        .execute()
    )
    return dataset.describe_commit(loc, spec, delta.version(), operation="merge", written=ids)


def child(approach: str, commits: int, recordings: int, root: str) -> dict[str, Any]:
    """One approach's commits in this process; returns its figures."""
    from bench_store import segment_records

    from results_store import dataset
    from results_store.models import RecordingRecord
    from valence_pipeline.runtime import release_free_heap, use_system_arrow_allocator

    use_system_arrow_allocator()
    if approach == "peer":
        dataset._replace = _peer_merge  # type: ignore[assignment]
    rng = random.Random(1)
    now = dt.datetime.now(dt.UTC)
    seconds: list[float] = []
    rss: list[float] = []
    rid = 0
    for n in range(commits):
        writer = dataset.DatasetWriter(root, f"run-{n}")
        rows, segs = [], []
        for _ in range(recordings):
            rid += 1
            rows.append(
                RecordingRecord(
                    recording_id=rid,
                    source_uri=f"s3://calls/c{rid}.wav",
                    source_version="v1",
                    bucket="calls",
                    key=f"c{rid}.wav",
                    version_id=None,
                    etag="e",
                    size_bytes=1,
                    sha256=None,
                    content_type="audio/wav",
                    duration_s=150.0,
                    sample_rate=8000,
                    channels=1,
                    status="completed",
                    reason=None,
                    discovered_at=now,
                    processed_at=now,
                )
            )
            segs += segment_records(rid, SEGMENTS_PER_RECORDING, rng)
        writer.add_recordings(rows)
        writer.add_emotion_segments(segs)
        del rows, segs
        start = time.perf_counter()
        writer.commit()
        seconds.append(time.perf_counter() - start)
        release_free_heap()
        rss.append(_rss_mib())
    found = dataset.read_table(root, "emotion_segments", columns=["recording_id"]).num_rows
    expected = commits * recordings * SEGMENTS_PER_RECORDING
    if found != expected:
        raise SystemExit(f"{approach}: {found} rows in the table, expected {expected}")
    return {"seconds": seconds, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--commits", type=int, default=16)
    parser.add_argument("--recordings", type=int, default=250, help="recordings per commit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.commits, args.recordings, args.root)), flush=True)
        # As the dataset child does: skip the teardown of delta-rs's threads (after a merge it
        # can abort the interpreter on exit).
        os._exit(0)
    print(f"{args.commits} commits of {args.recordings} recordings ({SEGMENTS_PER_RECORDING} segments each)")
    results = {}
    for approach in ("ours", "peer"):
        with tempfile.TemporaryDirectory(prefix="bench-dataset-") as root:
            out = subprocess.run(
                [sys.executable, __file__, "--child", approach, "--root", root,
                 "--commits", str(args.commits), "--recordings", str(args.recordings)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[approach] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{'approach':<6} {'first s':>8} {'last s':>8} {'total s':>8} {'RSS first':>10} {'RSS last':>9} {'growth':>7}"
    )
    for approach, r in results.items():
        s, m = r["seconds"], r["rss"]
        print(
            f"{approach:<6} {s[0]:>8.2f} {s[-1]:>8.2f} {sum(s):>8.2f} {m[0]:>7.0f} MiB {m[-1]:>5.0f} MiB "
            f"{m[-1] / m[0]:>6.2f}x"
        )
    ours, peer = results["ours"], results["peer"]
    print(
        f"ours / peer: commit time {sum(ours['seconds']) / sum(peer['seconds']):.2f}x, "
        f"last RSS {ours['rss'][-1] / peer['rss'][-1]:.2f}x, "
        f"growth over the night {ours['rss'][-1] - ours['rss'][0]:.0f} MiB against "
        f"{peer['rss'][-1] - peer['rss'][0]:.0f} MiB"
    )


if __name__ == "__main__":
    main()
