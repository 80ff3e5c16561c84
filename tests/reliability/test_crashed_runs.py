"""Crashed runs do not stay `running` in `pipeline_runs`.

- The repository closes stale runs (started long ago, or whose Prefect flow run is final) as
  `crashed` and never touches the caller's own run or a run that closed itself.
- The flow state hooks (`tasks.hooks`) mark a run's row, called as Prefect calls them.
- A flow-run process SIGKILLed mid-run leaves its row `running` (no hook can run); the next
  run's `close_stale_runs` closes it once Prefect reports the flow run final, or once it is
  older than `stale_run_after_s`.

Run on its own: `pytest tests/reliability/test_crashed_runs.py -q -s`.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.pipeline.helpers import configure, query

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def add_run(store: Any, run_id: str, started_at: dt.datetime, status: str = "running") -> None:
    from results_store import repository as repo
    from results_store.models import RunStatus, RunTrigger
    from results_store.records import RunStart

    with store.session_scope() as s:
        repo.start_run(s, RunStart(run_id, RunTrigger.MANUAL, "test", "h", started_at=started_at))
        if status != "running":
            repo.finish_run(s, run_id, status=RunStatus(status), counts={}, ended_at=started_at)


def run_statuses(url: str) -> dict[str, str]:
    return {run_id: status for run_id, status in query(url, "select flow_run_id, status from pipeline_runs")}


def test_repository_closes_stale_runs_as_crashed(store: Any) -> None:
    from results_store import repository as repo

    add_run(store, "old", NOW - dt.timedelta(hours=30))
    add_run(store, "final-in-prefect", NOW - dt.timedelta(minutes=5))
    add_run(store, "live", NOW - dt.timedelta(minutes=5))
    add_run(store, "old-but-me", NOW - dt.timedelta(hours=30))
    add_run(store, "old-completed", NOW - dt.timedelta(hours=30), status="completed")
    add_run(store, "old-failed", NOW - dt.timedelta(hours=30), status="failed")
    with store.session_scope() as s:
        closed = repo.close_stale_runs(
            s,
            started_before=NOW - dt.timedelta(hours=24),
            final_flow_runs=["final-in-prefect", "old-completed"],
            keep=["old-but-me"],
            now=NOW,
        )
    assert closed == ["final-in-prefect", "old"]
    assert run_statuses(store.url) == {
        "old": "crashed",
        "final-in-prefect": "crashed",
        "live": "running",
        "old-but-me": "running",
        "old-completed": "completed",
        "old-failed": "failed",
    }
    ended = dict(query(store.url, "select flow_run_id, ended_at from pipeline_runs where status = 'crashed'"))
    assert set(ended) == {"old", "final-in-prefect"} and all(v is not None for v in ended.values())
    with store.session_scope() as s:  # idempotent
        assert repo.close_stale_runs(s, started_before=NOW, now=NOW, keep=["old-but-me"]) == ["live"]


def test_state_hooks_mark_only_a_run_still_running(
    store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.hooks import mark_run_crashed, mark_run_failed
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", store.url)
    get_settings.cache_clear()
    ids = {name: uuid.uuid4() for name in ("fails", "crashes", "cancelled", "closed-itself")}
    for name, run_id in ids.items():
        add_run(store, str(run_id), NOW, status="completed" if name == "closed-itself" else "running")

    def call(hook: Any, name: str, state: str) -> None:  # as Prefect calls a flow hook
        hook(
            SimpleNamespace(name="nightly-ingest"), SimpleNamespace(id=ids[name]), SimpleNamespace(type=state)
        )

    call(mark_run_failed, "fails", "FAILED")
    call(mark_run_crashed, "crashes", "CRASHED")
    call(mark_run_crashed, "cancelled", "CANCELLED")
    call(mark_run_failed, "closed-itself", "FAILED")
    # A run that died before opening its row: nothing to mark, and the hook does not raise.
    mark_run_failed(None, SimpleNamespace(id=uuid.uuid4()), None)
    by_name = {name: run_statuses(store.url)[str(run_id)] for name, run_id in ids.items()}
    assert by_name == {
        "fails": "failed",
        "crashes": "crashed",
        "cancelled": "crashed",
        "closed-itself": "completed",
    }
    get_settings.cache_clear()


def test_a_hook_never_raises_when_the_database_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.hooks import mark_run_crashed
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    # The hook waits this long for the database to come back before it gives up (a minute by
    # default); what is tested is that giving up does not raise.
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_RECONNECT_WAIT_S", "2")
    get_settings.cache_clear()
    mark_run_crashed(None, SimpleNamespace(id=uuid.uuid4()), None)
    get_settings.cache_clear()


_RUN_IN_CHILD = """
import sys
from flows.ingest import nightly_ingest, run_to_result
run_to_result(nightly_ingest, source=sys.argv[1], trigger="manual")
"""


def test_sigkilled_flow_run_is_closed_by_the_next_run(
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    from tasks.hooks import close_stale_runs

    # Real-time emulator: jobs take ~10 s, so the run is in flight when it is killed.
    emu = make_emulator(time_scale=1.0)
    upload_samples(s3_client, bucket, tuple(SampleRecording(f"in/k{i}.wav", 20) for i in range(2)))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    configure(monkeypatch, seaweedfs, emu, url, tmp_path / "parquet")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    child = subprocess.Popen(
        [sys.executable, "-c", _RUN_IN_CHILD, f"s3://{bucket}/in/"], env=env, start_new_session=True
    )
    running: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None and not running:
            time.sleep(0.2)
            if Path(tmp_path / "results.db").exists():
                try:
                    running = [r for r, s in run_statuses(url).items() if s == "running"]
                except Exception:  # noqa: BLE001 - the schema may be mid-creation
                    running = []
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the flow process and anything it started
        child.wait()
    assert len(running) == 1, f"child never opened its run (exit {child.returncode})"
    killed = running[0]
    assert run_statuses(url)[killed] == "running"  # what a SIGKILL leaves behind

    # The next run starts while Prefect still reports the killed flow run as running and it
    # is young: it might be alive on another worker, so it is left alone.
    assert close_stale_runs("next-run") == []
    # Prefect finds out (its heartbeat-based detection marks the flow run crashed; done here
    # through the API as that service does) -> the next run closes the row.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(killed), Crashed(message="process killed"), force=True)
    assert close_stale_runs("next-run") == [killed]
    assert run_statuses(url)[killed] == "crashed"
    print(f"\nSIGKILLed run {killed}: left running, closed as crashed by the next run")


def test_a_run_older_than_the_limit_is_closed_without_asking_prefect(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from results_store.db import Store
    from tasks.hooks import close_stale_runs
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", migrated_url)
    monkeypatch.setenv("VALENCE_PIPELINE_STALE_RUN_AFTER_S", "3600")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # unreachable: age rule only
    get_settings.cache_clear()
    store = Store(migrated_url)
    now = dt.datetime.now(dt.UTC)
    add_run(store, "run-from-yesterday", now - dt.timedelta(hours=26))
    add_run(store, "run-from-a-minute-ago", now - dt.timedelta(minutes=1))
    store.dispose()
    assert close_stale_runs("me") == ["run-from-yesterday"]
    assert run_statuses(migrated_url)["run-from-a-minute-ago"] == "running"
    get_settings.cache_clear()
