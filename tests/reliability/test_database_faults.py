"""Database faults: a private PostgreSQL server restarted under the pipeline.

- The store waits for a restarting server (bounded) instead of failing a transaction at once,
  and `Store.transaction` re-runs one that the restart cut off.
- A nightly run in a child process has its database restarted in the middle: the run finishes
  (waiting and retrying within a bound) or fails resumably; nothing is marked completed that
  is not stored; the next run finishes everything with nothing paid twice (emulator ledger).

The assertions read outcomes only (database rows, the ledger), not how the run is organised.
Run on its own: `pytest tests/reliability/test_database_faults.py -q -s` (prints its figures).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import child_flow_env, configure, paid, query, statuses
from tests.reliability.postgres import PrivatePostgres


def test_store_waits_for_a_restarting_server_and_replays_a_cut_transaction(
    private_postgres: PrivatePostgres,
) -> None:
    from results_store.db import Store, upgrade

    upgrade(private_postgres.url)
    store = Store(private_postgres.url, reconnect_wait_s=60)
    try:
        with store.session_scope() as s:
            s.execute(sa.text("create table t (n int primary key)"))
        # Down while a transaction starts: it waits for the server instead of failing.
        private_postgres.stop("fast")
        threading.Timer(1.0, private_postgres.start).start()
        with store.session_scope() as s:
            s.execute(sa.text("insert into t values (1)"))
        # Cut off in the middle: the server rolls it back; `transaction` runs it again whole.
        attempts = []

        def work(session: Any) -> int:
            attempts.append(1)
            session.execute(sa.text("insert into t values (2) on conflict do nothing"))
            if len(attempts) == 1:
                session.execute(sa.text("select pg_terminate_backend(pg_backend_pid())"))
            return len(attempts)

        assert store.transaction(work) == 2
        with store.session_scope() as s:
            assert sorted(s.scalars(sa.text("select n from t"))) == [1, 2]
    finally:
        store.dispose()
    print(f"\nstore: waited through a restart, replayed a cut transaction ({len(attempts)} attempts)")


def test_a_statement_error_is_not_retried(private_postgres: PrivatePostgres) -> None:
    from results_store.db import Store, upgrade

    upgrade(private_postgres.url)
    store = Store(private_postgres.url)
    calls = []

    def broken(session: Any) -> None:
        calls.append(1)
        session.execute(sa.text("select * from no_such_table"))

    try:
        with pytest.raises(sa.exc.ProgrammingError):
            store.transaction(broken)
    finally:
        store.dispose()
    assert calls == [1]


# --------------------------------------------------------------------------- mid-run restart

_RUN_IN_CHILD = """
import sys
from flows.ingest import nightly_ingest, run_to_result
run_to_result(nightly_ingest, source=sys.argv[1], trigger="manual")
"""

SAMPLES = tuple(SampleRecording(f"in/db{i:02d}.wav", 6 + 5 * i, channels=1 + i % 2) for i in range(8))


def completed_but_not_stored(url: str) -> list[str]:
    """Recordings marked completed without both providers' results in the database."""
    rows = query(
        url,
        """
        select r.key from recordings r
        where r.status = 'completed' and (
          not exists (select 1 from provider_jobs j join emotion_segments e on e.job_id = j.id
                      where j.recording_id = r.id and j.provider = 'valence')
          or not exists (select 1 from provider_jobs j join prosody_results p on p.job_id = j.id
                         where j.recording_id = r.id and j.provider = 'valsea'))
        """,
    )
    return [key for (key,) in rows]


def paid_twice(emu: Any) -> dict[str, dict[str, int]]:
    return {
        sha: counts
        for sha, counts in emu.ledger()["by_sha256"].items()
        if any(n > 1 for kind, n in counts.items() if kind != "total")
    }


def test_database_restart_in_the_middle_of_a_run(
    private_postgres: PrivatePostgres,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    # Jobs take a few real seconds, so the run is mid-flight (uploads billed, results pending)
    # when the database goes away.
    emu = make_emulator(time_scale=10.0)
    upload_samples(s3_client, bucket, SAMPLES)
    url = private_postgres.url
    configure(monkeypatch, seaweedfs, emu, url, tmp_path / "parquet")
    log = (tmp_path / "child.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-c", _RUN_IN_CHILD, f"s3://{bucket}/in/"],
        env={**child_flow_env(tmp_path / "prefect-child"), "PREFECT_API_URL": prefect_api},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None and sum(paid(emu).values()) < 2:
            time.sleep(0.2)
        restarted_mid_run = child.poll() is None
        paid_at_restart = sum(paid(emu).values())
        private_postgres.restart(down_s=3.0)
        child.wait(timeout=300)  # bounded: the run finishes or gives up, it does not hang
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    child_log = (tmp_path / "child.log").read_text(errors="replace")
    assert restarted_mid_run, (
        f"the run ended (exit {child.returncode}) before the restart:\n{child_log[-3000:]}"
    )
    first = statuses(url)
    first_counts = {s: sum(1 for v, _ in first.values() if v == s) for s in {v for v, _ in first.values()}}
    assert completed_but_not_stored(url) == []
    assert paid_twice(emu) == {}

    # The next run (in this process, on the same server) finishes the rest and pays for
    # nothing a second time.
    from flows.ingest import nightly_ingest, run_to_result
    from valence_pipeline.runtime import reset_runtime

    reset_runtime()
    run_to_result(nightly_ingest, source=f"s3://{bucket}/in/", trigger="manual")
    final = statuses(url)
    assert set(final) == {s.key for s in SAMPLES}
    assert {status for status, _ in final.values()} == {"completed"}, final
    assert completed_but_not_stored(url) == []
    assert paid_twice(emu) == {}
    total = paid(emu)
    assert total["valsea_job"] == len(SAMPLES)
    assert total["valence_async"] + total["valence_discrete"] == len(SAMPLES)
    waits = child_log.count("database connection lost")
    task_retries = child_log.count("Retry ")
    print(
        f"\nrestart after {paid_at_restart} payments: first run exit {child.returncode}, "
        f"{waits} waits for the database, {task_retries} task retries, "
        f"recordings {first_counts}; after the next run all {len(final)} completed, "
        f"payments {dict(total)} (none twice)"
    )
