"""`valence-pipeline run` on a fresh database creates the schema; on one behind the code it is
refused before the flow (and so Prefect's temporary server) starts."""

from __future__ import annotations

from typing import Any

import pytest

from commands.main import main
from results_store import db


@pytest.fixture
def flow_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stands in for the nightly flow: what reaching it would start is not this test's subject."""
    import flows.ingest

    calls: list[dict[str, Any]] = []

    def nightly(return_state: bool = False, **kwargs: Any) -> Any:
        from prefect.states import Completed

        calls.append(kwargs)
        result = {"summary": "nothing to do", "failed": 0}
        return Completed(data=result) if return_state else result

    monkeypatch.setattr(flows.ingest, "nightly_ingest", nightly)
    # Nor the temporary Prefect server the run would start for it (tests/reliability/
    # test_killed_process_leaves_nothing.py starts a real one).
    import contextlib

    import flows.temporary_server

    monkeypatch.setattr(flows.temporary_server, "temporary_prefect_server", contextlib.nullcontext)
    return calls


def _use(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    from valence_pipeline.settings import get_settings

    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", url)
    get_settings.cache_clear()


def _revision(url: str) -> str | None:
    engine = db.create_engine_for(url)
    try:
        return db.current_revision(engine)
    finally:
        engine.dispose()


def test_first_run_on_an_empty_database_creates_the_schema(
    db_url: str, monkeypatch: pytest.MonkeyPatch, flow_calls: list[dict[str, Any]]
) -> None:
    _use(monkeypatch, db_url)
    assert _revision(db_url) is None
    assert main(["run", "--source", "s3://recordings/"]) == 0
    assert _revision(db_url) == db.head_revision()
    assert [c["source"] for c in flow_calls] == [["s3://recordings/"]]
    assert main(["run", "--source", "s3://recordings/"]) == 0  # and again: nothing to create


def test_a_database_behind_the_code_is_refused_before_the_flow_starts(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    flow_calls: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    db.upgrade(db_url, "0001")
    _use(monkeypatch, db_url)
    assert main(["run", "--source", "s3://recordings/"]) == 2
    err = capsys.readouterr().err
    assert f"database schema is at 0001, code needs {db.head_revision()}" in err
    assert "valence-pipeline db upgrade" in err
    assert flow_calls == []
    assert _revision(db_url) == "0001"  # an operator's call, not the run's
