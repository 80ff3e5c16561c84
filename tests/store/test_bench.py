"""Keep bench/bench_store.py working: a tiny run against every target (timings not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_store.py"


def test_benchmark_writes_and_reports_every_target(postgres_url: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--rows",
            "300",
            "--segments-per-recording",
            "30",
            "--postgres-url",
            postgres_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("timeline rows: 300 (10 recordings x 30 segments)")
    table = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert set(table) == {"parquet", "delta", "delta-rerun", "delta-small", "sqlite", "postgresql"}
    assert lines[-1].startswith("delta / plain parquet writes per second: ")
    for target, cells in table.items():
        assert cells[1] == ("30" if target == "delta-small" else "300"), (
            target
        )  # rows read back after writing
        assert float(cells[3].replace(",", "")) > 0, target
