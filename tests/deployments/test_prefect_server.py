"""prefect.yaml against a real `prefect server start`: the deployments register with their
schedule and event trigger, `valence-pipeline notify` makes a worker process the upload, and
several workers share the providers' rate limits through Prefect's global concurrency limits.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.fixtures.prefect_server import PrefectServer, read_json
from tests.pipeline.helpers import pipeline_env

REPO = Path(__file__).resolve().parents[2]
POOL = "valence-pipeline"
CLI = str(Path(sys.executable).with_name("valence-pipeline"))


def worker_env(
    server: PrefectServer, sw: SeaweedFS, emu: Any, database_url: str, out: Path, repository: str
) -> dict[str, str]:
    """A worker's environment: the pipeline's configuration (PostgreSQL: several flow-run
    processes write at once), where the pull step clones the code from, plus this server."""
    from results_store.db import upgrade

    upgrade(database_url)
    return server.env(**pipeline_env(sw, emu, database_url, out), VALENCE_PIPELINE_REPOSITORY=repository)


def deployment(server: PrefectServer, name: str) -> dict[str, Any]:
    return dict(read_json(server, "GET", f"/deployments/name/{name}"))


def flow_runs(server: PrefectServer, deployment_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 50}
    return list(read_json(server, "POST", "/flow_runs/filter", body))


def wait_for_runs(
    server: PrefectServer, deployment_id: str, count: int, timeout_s: float = 300
) -> list[dict[str, Any]]:
    """The deployment's runs once `count` of them are final (fails with the runs' states if not)."""
    deadline = time.monotonic() + timeout_s
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = flow_runs(server, deployment_id)
        if len([r for r in runs if r["state"]["type"] in _FINAL]) >= count:
            return runs
        time.sleep(1)
    raise AssertionError(
        f"runs not final in {timeout_s} s: {[(r['name'], r['state']['type']) for r in runs]}"
    )


_FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def recording_statuses(database_url: str) -> dict[str, str]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select key, status from recordings")).all()
    engine.dispose()
    return {key: status for key, status in rows}


def test_deploy_registers_the_nightly_schedule_and_the_upload_trigger(deployed: PrefectServer) -> None:
    nightly = deployment(deployed, "nightly-ingest/nightly")
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"]
    assert nightly["global_concurrency_limit"]["limit"] == 1  # two nights never overlap
    assert nightly["work_pool_name"] == POOL
    # Workers anywhere: each run clones the code named by the worker's environment, and sends
    # heartbeats (the automation in deployments/automations.yaml crashes silent runs).
    [pull] = nightly["pull_steps"]
    assert pull["prefect.deployments.steps.git_clone"]["repository"] == "{{ $VALENCE_PIPELINE_REPOSITORY }}"
    assert nightly["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"

    # The server's scheduler plans the coming nights (the temporary server has no scheduler).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not flow_runs(deployed, nightly["id"]):
        time.sleep(1)
    planned = flow_runs(deployed, nightly["id"])
    assert planned and {r["state"]["type"] for r in planned} == {"SCHEDULED"}
    assert all(r["expected_start_time"][11:19] == "02:00:00" for r in planned)
    assert all(r["parameters"]["trigger"] == "schedule" for r in planned)

    upload = deployment(deployed, "process-recordings/on-upload")
    automations = read_json(deployed, "POST", "/automations/filter", {})
    [trigger] = [
        a["trigger"]
        for a in automations
        if any(act.get("deployment_id") == upload["id"] for act in a["actions"])
    ]
    assert trigger["expect"] == ["valence-pipeline.recording.uploaded"]


def test_notify_runs_the_upload_deployment_on_a_worker(
    deployed: PrefectServer,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    pg_url: str,
    tmp_path: Path,
    code_repository: str,
) -> None:
    upload_samples(s3_client, bucket, (SampleRecording("calls/new.wav", 12),))
    env = worker_env(deployed, seaweedfs, emu, pg_url, tmp_path / "parquet", code_repository)
    deployed.start_worker(POOL, "w-notify", env, tmp_path / "worker.log")
    upload = deployment(deployed, "process-recordings/on-upload")
    before = len(flow_runs(deployed, upload["id"]))
    try:
        uri = f"s3://{bucket}/calls/new.wav"
        sent = subprocess.run([CLI, "notify", uri], env=env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert f"for {uri}" in sent.stdout

        runs = wait_for_runs(deployed, upload["id"], before + 1)
    finally:
        deployed.stop_workers()
    [run] = [r for r in runs if r["parameters"].get("uris") == [uri]]
    assert run["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    assert run["parameters"]["trigger"] == "event"
    assert run["name"] == f"upload {uri}"
    assert "Executing deployment step: git_clone" in (tmp_path / "worker.log").read_text()
    body = {"flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 200}
    task_runs = read_json(deployed, "POST", "/task_runs/filter", body)
    tagged = {tag: sorted(t["name"] for t in task_runs if tag in t["tags"]) for tag in ("valence", "valsea")}
    assert tagged == {"valence": [f"async {uri}"], "valsea": [f"prosody {uri}"]}
    assert recording_statuses(pg_url) == {"calls/new.wav": "completed"}


def test_notify_refuses_a_prefix(deployed: PrefectServer) -> None:
    sent = subprocess.run(
        [CLI, "notify", "s3://bucket/folder/"], env=deployed.env(), capture_output=True, text=True, timeout=60
    )
    assert sent.returncode != 0
    assert "not an object URI" in sent.stderr


def test_workers_share_the_provider_rate_limits(
    deployed: PrefectServer,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    make_emulator: Any,
    pg_url: str,
    tmp_path: Path,
    code_repository: str,
) -> None:
    # The providers allow 5 calls a second; the operator set the shared limits to 2/s. Each
    # process on its own would allow itself 50/s, so only the shared limit keeps two flow-run
    # processes together under the providers' 5/s (slots decay at 2/s: at most 2 + 2 in any
    # second, even after an idle moment).
    limits = (5, 3000, 100000, 1000000)
    emu = make_emulator(time_scale=3600.0, valence_limits=limits, valsea_limits=limits)
    for provider in ("valence", "valsea"):
        _set_global_limit(deployed, f"{provider}-api", 2)
    samples = tuple(SampleRecording(f"in/r{i}.wav", 15 + i) for i in range(6))
    upload_samples(s3_client, bucket, samples)
    env = worker_env(
        deployed, seaweedfs, emu, pg_url, tmp_path / "parquet", code_repository
    )  # 50/s per process
    upload = deployment(deployed, "process-recordings/on-upload")
    before = len(flow_runs(deployed, upload["id"]))
    for name in ("w-a", "w-b"):
        deployed.start_worker(POOL, name, env, tmp_path / f"{name}.log")
    try:
        for half in (samples[:3], samples[3:]):
            uris = [f"s3://{bucket}/{s.key}" for s in half]
            _create_run(deployed, upload["id"], uris)
        runs = wait_for_runs(deployed, upload["id"], before + 2)
    finally:
        deployed.stop_workers()
    mine = [r for r in runs if str(r["parameters"].get("uris", [""])[0]).startswith(f"s3://{bucket}/")]
    assert [r["state"]["type"] for r in mine] == ["COMPLETED", "COMPLETED"]
    a, b = mine
    # Precondition of the point being made: the two runs (processes) overlapped.
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
    assert set(recording_statuses(pg_url).values()) == {"completed"}
    answered = Counter(entry["status"] for entry in emu.requests_log())
    assert answered[429] == 0, answered


def _set_global_limit(server: PrefectServer, name: str, per_second: int) -> None:
    """What an operator does in the UI (Concurrency -> Global): the pipeline keeps a limit it finds."""
    body = {"name": name, "limit": per_second, "slot_decay_per_second": float(per_second)}
    existing = [
        c for c in read_json(server, "POST", "/v2/concurrency_limits/filter", {}) if c["name"] == name
    ]
    if existing:
        read_json(server, "PATCH", f"/v2/concurrency_limits/{name}", body)
    else:
        read_json(server, "POST", "/v2/concurrency_limits/", body)


def _create_run(server: PrefectServer, deployment_id: str, uris: list[str]) -> None:
    body = {"parameters": {"uris": uris, "trigger": "manual"}}
    read_json(server, "POST", f"/deployments/{deployment_id}/create_flow_run", body)
