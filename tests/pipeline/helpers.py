"""What the pipeline tests share: pointing the pipeline at the test services, reading back the
database and the emulator's ledger, and the environment of a flow run in a child process."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from localstack.seaweedfs import SeaweedFS


def pipeline_env(sw: SeaweedFS, emu: Any, database_url: str, out: Path, **extra: str) -> dict[str, str]:
    """The environment a user would set to run the pipeline against these services."""
    return {
        **sw.env(),
        "VALENCE_API_KEY": emu.valence_key,
        "VALENCE_API_BASE_URL": emu.base_url,
        "VALSEA_API_KEY": emu.valsea_key,
        "VALSEA_API_BASE_URL": emu.base_url,
        "VALENCE_PIPELINE_DATABASE_URL": database_url,
        "VALENCE_PIPELINE_OUTPUT_URI": str(out),
        "VALENCE_PIPELINE_VALENCE_PICKUP_DELAY_S": "0.05",
        "VALENCE_PIPELINE_VALENCE_S_PER_AUDIO_HOUR": "0.1",
        "VALENCE_PIPELINE_VALSEA_PICKUP_DELAY_S": "0.05",
        "VALENCE_PIPELINE_VALSEA_S_PER_AUDIO_HOUR": "0.1",
        "VALENCE_PIPELINE_POLL_MIN_INTERVAL_S": "0.1",
        "VALENCE_PIPELINE_POLL_MAX_INTERVAL_S": "0.5",
        "VALENCE_PIPELINE_VALENCE_RATE_LIMITS": '{"second": 50, "minute": 3000, "hour": 100000, "day": 1000000}',
        "VALENCE_PIPELINE_VALSEA_RATE_LIMITS": '{"second": 50, "minute": 3000, "hour": 100000, "day": 1000000}',
        **extra,
    }


def configure(
    monkeypatch: pytest.MonkeyPatch, sw: SeaweedFS, emu: Any, database_url: str, out: Path, **extra: str
) -> None:
    """Point the pipeline at the test services through the environment, as a user would."""
    for name, value in pipeline_env(sw, emu, database_url, out, **extra).items():
        monkeypatch.setenv(name, value)
    from results_store.db import upgrade
    from valence_pipeline.runtime import reset_runtime
    from valence_pipeline.settings import get_settings

    get_settings.cache_clear()
    reset_runtime()
    upgrade(database_url)


def child_flow_env(prefect_home: Path) -> dict[str, str]:
    """This (configured) environment for a flow run in a child process: its own Prefect home
    and no API URL, so the child starts Prefect's temporary server as its own subprocess."""
    # Its start is slow on a loaded 2-core machine (Prefect's 20 s default timed out there).
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    return env


def paid(emu: Any) -> Counter[str]:
    """What the emulator billed, by kind (valence_async, valence_discrete, valsea_job)."""
    return Counter(entry["kind"] for entry in emu.ledger()["entries"])


def query(database_url: str, statement: Any) -> list[Any]:
    """The rows of one read-only statement (text or Core), on a short-lived engine."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(statement) if isinstance(statement, str) else statement).all())
    engine.dispose()
    return rows


def in_flight(database_url: str, this_night: bool = False) -> set[tuple[str, str]]:
    """(key, provider) of calls without an idempotency key (a Valsea submit, a discrete call)
    whose intent is stored and outcome not: a kill that lands now leaves them unknown, and the
    next run rightly fails them rather than pay twice. `this_night`: sent by the latest run."""
    import sqlalchemy as sa

    statement = sa.text(
        "select r.key, j.provider from provider_jobs j join recordings r on r.id = j.recording_id "
        "where j.status = 'uploading' and j.external_id like 'sending:%' and (:every or "
        "j.flow_run_id = (select flow_run_id from pipeline_runs order by started_at desc limit 1))"
    ).bindparams(every=not this_night)
    return set(query(database_url, statement))


def count(database_url: str, table: str, where: str = "") -> int:
    import sqlalchemy as sa

    statement = sa.select(sa.func.count()).select_from(sa.table(table))
    if where:
        statement = statement.where(sa.text(where))
    return int(query(database_url, statement)[0][0])


def statuses(database_url: str) -> dict[str, tuple[str, str | None]]:
    rows = query(database_url, "select key, status, reason from recordings")
    return {key: (status, reason) for key, status, reason in rows}
