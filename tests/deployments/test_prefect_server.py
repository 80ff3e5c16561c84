"""prefect.yaml against a real `prefect server start`: the deployments register with their
schedule and event trigger, and `valence-pipeline notify` makes a worker process the upload
(several workers sharing one night: tests/deployments/test_workers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    # Prefect's per-run workspaces and runner storage go to the temporary directory; a flow run
    # killed by a test cannot remove its own, so they land in the test's folder, not in /tmp.
    scratch = out.parent / "worker-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return server.env(
        **pipeline_env(sw, emu, database_url, out),
        VALENCE_PIPELINE_REPOSITORY=repository,
        TMPDIR=str(scratch),
    )


def deployment(server: PrefectServer, name: str) -> dict[str, Any]:
    return dict(read_json(server, "GET", f"/deployments/name/{name}"))


def flow_runs(server: PrefectServer, deployment_id: str) -> list[dict[str, Any]]:
    # The API's largest page: the session's tests share one server, and counts before and
    # after must see every run of the deployment.
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
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


def _deploy_automations(server: PrefectServer) -> list[str]:
    done = subprocess.run(
        [CLI, "deploy", "automations"], env=server.env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_scheduled_runs_are_named_for_their_night_from_the_moment_they_exist(
    deployed: PrefectServer, seaweedfs: SeaweedFS, bucket: str, emu: Any, tmp_path: Path
) -> None:
    nightly = deployment(deployed, "nightly-ingest/nightly")

    def night_names() -> dict[str, str]:
        return {r["id"]: r["name"] for r in flow_runs(deployed, nightly["id"])}

    # Right after `prefect deploy --all`, as the README's deploy steps go: however far the
    # server's scheduler got, the coming nights exist now and carry their day.
    out = _deploy_automations(deployed)
    planned = flow_runs(deployed, nightly["id"])
    assert len(planned) >= 3 and {r["state"]["type"] for r in planned} == {"SCHEDULED"}
    assert {r["name"] for r in planned} == {f"nightly-{r['expected_start_time'][:10]}" for r in planned}
    assert all(line.startswith(("created: ", "updated: ", "named: nightly-")) for line in out)
    time.sleep(3)  # the scheduler (every second here) adds no randomly named twin of a night
    assert night_names() == {r["id"]: r["name"] for r in planned}

    # A night the scheduler plans later (here: the first one, deleted, is planned again) is
    # random-named until the next naming pass: here a nightly run's end (an empty night).
    first = min(planned, key=lambda r: r["expected_start_time"])
    read_json(deployed, "DELETE", f"/flow_runs/{first['id']}")
    known = {r["id"] for r in planned}
    deadline = time.monotonic() + 60
    new: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not new:
        new = [r for r in flow_runs(deployed, nightly["id"]) if r["id"] not in known]
        time.sleep(0.5)
    [replanned] = new
    assert replanned["expected_start_time"] == first["expected_start_time"]
    assert replanned["name"] != first["name"]  # Prefect's random name
    env = deployed.env(
        **pipeline_env(seaweedfs, emu, f"sqlite:///{tmp_path / 'results.db'}", tmp_path / "out")
    )
    done = subprocess.run(
        [CLI, "run", "--source", f"s3://{bucket}/"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert night_names()[replanned["id"]] == first["name"]


def test_a_quick_run_is_named_for_what_it_does_before_any_worker_starts_it(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    """An operator's quick run in the UI (and an upload trigger's run) is created with a random
    name; `valence-pipeline deploy name-runs` names it from the server's events while it still
    waits. No worker runs in this test, so only the namer can have named it; `--every 0`
    turns off the periodic pass, so it is the event that did."""
    log_path = tmp_path / "name-runs.log"
    with log_path.open("wb") as log:
        namer = subprocess.Popen(
            [CLI, "deploy", "name-runs", "--every", "0"],
            env=deployed.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test stops all it started
        )
    created: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "following the server's events" not in log_path.read_text():
            assert namer.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert "following the server's events" in log_path.read_text(), log_path.read_text()[-3000:]

        # What the UI's "Quick run" posts: no name, no parameters.
        retry = deployment(deployed, "retry-failed/retry-failed")
        quick = read_json(deployed, "POST", f"/deployments/{retry['id']}/create_flow_run", {})
        upload = deployment(deployed, "process-recordings/on-upload")
        uri = "s3://calls/2026/11/29/a b.wav"
        event_run = read_json(
            deployed, "POST", f"/deployments/{upload['id']}/create_flow_run", {"parameters": {"uris": [uri]}}
        )
        created = [quick["id"], event_run["id"]]
        expected = {
            quick["id"]: f"retry-failed-{quick['expected_start_time'][:10]}",
            event_run["id"]: f"upload {uri}",
        }
        assert quick["name"] != expected[quick["id"]]  # Prefect's random name at creation

        def names() -> dict[str, tuple[str, str]]:
            runs = {r: read_json(deployed, "GET", f"/flow_runs/{r}") for r in created}
            return {r: (run["name"], run["state"]["type"]) for r, run in runs.items()}

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and {r: n for r, (n, _) in names().items()} != expected:
            time.sleep(0.2)
        assert names() == {r: (name, "SCHEDULED") for r, name in expected.items()}
    finally:
        os.killpg(namer.pid, signal.SIGTERM)
        try:
            namer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(namer.pid, signal.SIGKILL)
            namer.wait()
        for run_id in created:  # no later test's worker picks them up
            read_json(deployed, "DELETE", f"/flow_runs/{run_id}")


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
        [run] = [r for r in runs if r["parameters"].get("uris") == [uri]]
        # The run's process may still be sending its last log lines when its state says
        # Completed: read them before the worker (and with it that process) is stopped.
        lines = run_log_lines(deployed, run["id"], until=f"accepted {uri}")
    finally:
        deployed.stop_workers()
    assert run["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    assert run["parameters"]["trigger"] == "event"
    assert run["name"] == f"upload {uri}"
    assert "Executing deployment step: git_clone" in (tmp_path / "worker.log").read_text()
    assert recording_statuses(pg_url) == {"calls/new.wav": "completed"}
    # The pipeline's own lines reach the run's Logs tab from the worker's flow-run process,
    # the engine's threads included.
    assert any(line.startswith(f"accepted {uri}") for line in lines), lines
    assert any("uploaded as" in line for line in lines) and any("submitted as" in line for line in lines)


def run_log_lines(server: PrefectServer, run_id: str, until: str, timeout_s: float = 60) -> list[str]:
    """The run's log lines on the server, once one starts with `until` (or at the timeout)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [entry["message"] for entry in read_json(server, "POST", "/logs/filter", body)]
        if any(line.startswith(until) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_notify_refuses_a_prefix(deployed: PrefectServer) -> None:
    sent = subprocess.run(
        [CLI, "notify", "s3://bucket/folder/"], env=deployed.env(), capture_output=True, text=True, timeout=60
    )
    assert sent.returncode != 0
    assert "not an object URI" in sent.stderr


def _create_run(server: PrefectServer, deployment_id: str, uris: list[str]) -> None:
    body = {"parameters": {"uris": uris, "trigger": "manual"}}
    read_json(server, "POST", f"/deployments/{deployment_id}/create_flow_run", body)
