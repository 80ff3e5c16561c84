"""Secrets scan: provider keys, the database password and presigned-URL signatures appear
nowhere a person or another system can read them.

1. A flow run started the way a Prefect process worker starts it (`python -m prefect.engine`,
   logging configured by Prefect, no CLI): a dependency logs and raises text holding every
   secret; neither the process's own output nor the logs stored on the Prefect server hold one.

Run on its own: `pytest tests/reliability/test_secrets_scan.py -q -s` (prints its figures).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.reliability.worker import flow_run_logs, flow_run_state_message, run_as_worker

REDACTED = "[REDACTED]"

# Simulates a library that echoes credentials: it logs a warning with the presigned URL and the
# key, then raises with them. Set before the flow file is loaded, as a dependency would be.
_LEAKY_STORAGE = """
import logging, os
import valence_pipeline.s3 as s3

def leaky_listing(client, bucket, prefix):
    sig = "X-Amz-Signature=" + os.environ["LEAK_SIGNATURE"]
    logging.getLogger("botocore.endpoint").warning(
        "retrying https://s3.example/%s?%s for key %s", prefix, sig, os.environ["VALENCE_API_KEY"]
    )
    raise RuntimeError(
        f"storage refused https://s3.example/{prefix}?{sig} with x-api-key {os.environ['VALENCE_API_KEY']}, "
        f"Bearer {os.environ['VALSEA_API_KEY']}, database {os.environ['VALENCE_PIPELINE_DATABASE_URL']}"
    )

s3.list_latest_versions = leaky_listing
import tasks.discover
tasks.discover.discover.retries = 0  # fail at once: the retries' waits prove nothing here
"""


def test_worker_run_flow_process_redacts_its_logs(prefect_api: str, tmp_path: Path) -> None:
    keys = {
        "valence key": "va-" + secrets.token_urlsafe(16),
        "valsea key": "vs-" + secrets.token_urlsafe(16),
        "signature": secrets.token_hex(20),
        "database password": "pw-" + secrets.token_urlsafe(12),
    }
    env = {
        **os.environ,
        "VALENCE_API_KEY": keys["valence key"],
        "VALSEA_API_KEY": keys["valsea key"],
        "LEAK_SIGNATURE": keys["signature"],
        "VALENCE_PIPELINE_DATABASE_URL": f"postgresql+psycopg://app:{keys['database password']}@127.0.0.1:1/x",
        "VALENCE_PIPELINE_OUTPUT_URI": str(tmp_path / "out"),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "botocore",  # operators forward library logs to the UI
    }
    run = run_as_worker(
        "flows/ingest.py:nightly_ingest",
        {"source": "s3://recordings/in/", "trigger": "manual"},
        env,
        prelude=_LEAKY_STORAGE,
    )
    stored = flow_run_logs(run.flow_run_id)
    state = flow_run_state_message(run.flow_run_id)
    output = run.stdout + run.stderr
    print(
        f"\nworker-run flow: exit {run.returncode}, {len(output.splitlines())} output lines, "
        f"{len(stored)} logs stored on the server, final state {state.split(':')[0]}"
    )
    assert state.startswith("FAILED"), state
    # The leak happened and was logged (else the scan below proves nothing) ...
    assert "storage refused" in output and REDACTED in output, output[-3000:]
    assert any("storage refused" in m for m in stored) and any(REDACTED in m for m in stored), stored
    assert any("retrying https://s3.example/" in m for m in stored), stored
    # ... and no secret survived anywhere it was written.
    for name, value in keys.items():
        assert value not in output, f"{name} in the flow process's output"
        assert not [m for m in stored if value in m], f"{name} in the Prefect logs"


def test_database_url_is_a_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from commands.db import _safe
    from valence_pipeline.settings import Settings

    url = "postgresql+psycopg://app:s3cr3t-pass@db.internal:5432/results"
    monkeypatch.setenv("VALENCE_PIPELINE_DATABASE_URL", url)
    settings = Settings()
    assert settings.database_url.get_secret_value() == url
    for shown in (repr(settings), str(settings), settings.model_dump_json(), _safe(url)):
        assert "s3cr3t-pass" not in shown
    assert "s3cr3t-pass" in settings.secrets()  # registered for redaction by protect_process
