"""The run summary folds files one at a time: its counts are every file's, its table the first
`table_rows` in the table's order, whatever the size of the night."""

from __future__ import annotations

from typing import Any

from tasks.report import RunSummary
from valence_pipeline.bookkeeping import _in_chunks


def _file(i: int, status: str, reason: str = "", providers: list[str] | None = None) -> dict[str, Any]:
    return {
        "recording_id": i,
        "file": f"s3://b/in/{i:04d}.wav",
        "status": status,
        "reason": reason,
        "duration_s": 10.0,
        "jobs": {"valence": "completed"},
        "failed_providers": providers or [],
    }


def test_counts_are_every_files_and_the_table_keeps_the_first_rows_failed_first() -> None:
    summary = RunSummary("night", table_rows=5)
    for i in range(1000):
        if i in (700, 3):
            summary.add(_file(i, "failed", "valsea: provider_failed: boom", ["valsea"]))
        elif i == 500:
            summary.add(_file(i, "rejected", "too_short: 0.5 s"))
        else:
            summary.add(_file(i, "completed"))
    counts = summary.counts()
    assert counts["seen"] == 1000 and counts["completed"] == 997 and counts["failed"] == 2
    assert counts["rejected"] == 1 and counts["audio_seconds"] == 9990
    assert summary.failed_by_provider == {"valsea": 2}
    assert summary.failed_by_reason == {"valsea: provider_failed": 2}
    assert summary.rejected == {"too_short": 1}
    table = summary.table()
    assert [r["status"] for r in table] == ["failed", "failed", "rejected", "completed", "completed"]
    assert [r["file"].rsplit("/", 1)[-1] for r in table] == [
        "0003.wav", "0700.wav", "0500.wav", "0000.wav", "0001.wav",
    ]  # fmt: skip
    assert len(summary._rows) <= 10  # never more than twice the table's rows held
    assert "the first 5 of 1000 files" in summary.table_description()


def test_a_small_run_shows_every_file() -> None:
    summary = RunSummary("upload")
    for i in range(3):
        summary.add(_file(i, "completed"))
    assert len(summary.table()) == 3
    assert summary.table_description() == "Per-file outcomes of upload"


def test_in_lists_come_in_a_few_lengths() -> None:
    lengths = {len(c) for n in range(1, 1200) for c in _in_chunks(list(range(n)), 500)}
    assert lengths == {1, 2, 4, 8, 16, 32, 64, 128, 256, 500}
    assert [sorted(set(c)) for c in _in_chunks(list(range(7)), 500)] == [list(range(7))]
