"""Secrets scan: provider keys, the database password and presigned-URL signatures appear
nowhere a person or another system can read them.

1. A flow run started the way a Prefect process worker starts it (`python -m prefect.engine`,
   logging configured by Prefect, no CLI): a dependency logs and raises text holding every
   secret; neither the process's own output nor the logs stored on the Prefect server hold one.
2. A nightly run against an emulator injecting faults (5xx, 429, dropped and lost answers,
   failed jobs, failed part uploads), run the same way with debug logging: both provider keys,
   the S3 secret key and every presigned part-URL signature the client received appear
   nowhere: the process's output, the Prefect logs, artifacts and state messages of the flow
   and task runs, any text column of the results database, the Parquet dataset.

Run on its own: `pytest tests/reliability/test_secrets_scan.py -q -s` (prints its figures).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
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
import tasks.persist
tasks.persist.compact_dataset.retry_delay_seconds = 0  # its three tries, without the 35 s between
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
        # The database is unreachable (port 1): each store the run opens waits for it before
        # failing, 60 s by default; a second still goes through the reconnect path.
        "VALENCE_PIPELINE_DATABASE_RECONNECT_WAIT_S": "1",
    }
    home = tmp_path / "prefect-home"
    run = run_as_worker(
        "flows/ingest.py:nightly_ingest",
        {"source": "s3://recordings/in/", "trigger": "manual"},
        env,
        home=home,
        prelude=_LEAKY_STORAGE,
    )
    on_server = prefect_texts(run.flow_run_id)
    stored, states = on_server["logs"], on_server["states"]
    state = flow_run_state_message(run.flow_run_id)
    # What Prefect writes on the worker: a failed flow run's exception, pickled (always, whatever
    # the result-persistence settings say).
    written = [_with_base64_decoded(p.read_bytes()) for p in home.rglob("*") if p.is_file()]
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
    assert any("storage refused" in m for m in states), states
    assert any(b"storage refused" in blob for blob in written), "Prefect wrote no failure on the worker"
    # ... and no secret survived anywhere it was written.
    for name, value in keys.items():
        assert value not in output, f"{name} in the flow process's output"
        assert not [m for m in stored if value in m], f"{name} in the Prefect logs"
        assert not [m for m in states if value in m], f"{name} in a flow or task run's state"
        assert not [b for b in written if value.encode() in b], f"{name} in a file under the Prefect home"


def _with_base64_decoded(blob: bytes) -> bytes:
    """A file's bytes, followed by what each run of base64 in it decodes to (Prefect stores
    pickles as base64 text)."""
    decoded = [
        base64.b64decode(run + b"=" * (-len(run) % 4)) for run in re.findall(rb"[A-Za-z0-9+/]{40,}", blob)
    ]
    return b"\n".join([blob, *decoded])


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


# Records each presigned part URL's signature the client is about to use (the ground truth of
# the scan), in a file outside everything scanned. Installed before the flow loads.
_CAPTURE_SIGNATURES = """
import os, urllib.parse
from valence_client import transport

_request = transport.Transport.request

def capturing_request(self, method, path, **options):
    if path.startswith(("http://", "https://")):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        with open(os.environ["CAPTURED_SIGNATURES"], "a") as fh:
            for name in ("signature", "X-Amz-Signature"):
                for value in query.get(name, []):
                    fh.write(value + "\\n")
    return _request(self, method, path, **options)

transport.Transport.request = capturing_request
"""

FAULTS = "5xx=0.2,429=0.1,drop=0.1,lost=0.03,fail=0.2,parts=1,retry_after=0"


def database_texts(url: str) -> list[str]:
    """Every value of every column of every table, as text."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    texts: list[str] = []
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    texts.extend(str(value) for value in row if value is not None)
    finally:
        engine.dispose()
    return texts


def dataset_texts(root: Path) -> tuple[list[str], list[bytes]]:
    """Every Parquet value as text, and every file's raw bytes."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    raw: list[bytes] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw.append(path.read_bytes())
        texts.append(str(path))
        if path.suffix == ".parquet":
            texts.extend(str(row) for row in pq.read_table(path).to_pylist())
    return texts, raw


def prefect_texts(flow_run_id: str) -> dict[str, list[str]]:
    """What the Prefect server holds about the flow run: logs, artifacts, states, parameters."""
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    run_id = uuid.UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        states = [s for t in tasks for s in client.read_task_run_states(t.id)] + client.read_flow_run_states(
            run_id
        )
    return {
        "logs": flow_run_logs(flow_run_id),
        "artifacts": [f"{a.key} {a.description} {a.data}" for a in artifacts],
        "states": [f"{s.type.value} {s.name} {s.message}" for s in states],
        "names and parameters": [run.name, str(run.parameters)] + [t.name for t in tasks],
    }


def test_no_secret_anywhere_after_a_run_with_faults(
    prefect_api: str,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    tmp_path: Path,
) -> None:
    from results_store.db import upgrade
    from tests.pipeline.helpers import paid, pipeline_env

    emu = make_emulator(faults=FAULTS, seed=5)
    samples = (
        SampleRecording("in/clip.wav", 7),
        SampleRecording("in/call.wav", 45),
        SampleRecording("in/stereo-call.wav", 200, channels=2),  # 6.4 MB: two part uploads
        SampleRecording("in/meeting.flac", 30, fmt="FLAC"),
        SampleRecording("in/long.wav", 330),  # 10.6 MB: three parts
    )
    upload_samples(s3_client, bucket, samples)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade(url)
    out = tmp_path / "dataset"
    captured = tmp_path / "signatures.txt"
    env = {
        **os.environ,
        **pipeline_env(seaweedfs, emu, url, out),
        "CAPTURED_SIGNATURES": str(captured),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "valence_client,valence_pipeline,tasks,flows,results_store,urllib3",
        "VALENCE_PIPELINE_HTTP_MAX_RETRIES": "6",
    }
    run = run_as_worker(
        "flows/ingest.py:nightly_ingest",
        {"source": f"s3://{bucket}/in/", "trigger": "manual"},
        env,
        home=tmp_path / "prefect-home",
        prelude=_CAPTURE_SIGNATURES,
    )
    signatures = sorted(set(captured.read_text().split())) if captured.exists() else []
    secrets_ = {
        "valence key": emu.valence_key,
        "valsea key": emu.valsea_key,
        "S3 secret key": seaweedfs.secret_key,
        **{f"part signature {i}": sig for i, sig in enumerate(signatures)},
    }
    surfaces: dict[str, list[str]] = {
        "process output": [run.stdout, run.stderr],
        **prefect_texts(run.flow_run_id),
        "database": database_texts(url),
    }
    surfaces["dataset"], raw_files = dataset_texts(out)
    requests_seen = emu.requests_log()
    faults_met = sum(1 for r in requests_seen if r.get("fault"))
    print(
        f"\nfault run: exit {run.returncode}, {len(signatures)} part signatures, {faults_met} faulted answers, "
        f"paid {dict(paid(emu))}; scanned "
        + ", ".join(f"{name} ({len(texts)})" for name, texts in surfaces.items())
        + f", {len(raw_files)} dataset files"
    )
    # The scan means something: signatures were handed out, faults met, the run wrote output.
    assert signatures and faults_met > 0, (signatures, faults_met)
    assert surfaces["logs"] and surfaces["artifacts"] and surfaces["database"] and raw_files
    assert any("[REDACTED]" in text for text in surfaces["logs"] + [run.stderr]), "no URL was ever logged"
    leaks = [
        f"{secret_name} in {surface}"
        for secret_name, value in secrets_.items()
        for surface, texts in surfaces.items()
        if value and any(value in text for text in texts)
    ]
    leaks += [
        f"{secret_name} in a dataset file's bytes"
        for secret_name, value in secrets_.items()
        if value and any(value.encode() in blob for blob in raw_files)
    ]
    assert leaks == []
