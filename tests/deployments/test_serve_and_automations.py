"""`valence-pipeline serve` (every deployment from one process) and `valence-pipeline deploy
automations` (the silent-run automation) against a real `prefect server start`."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from flows.names import SERVE_EVERY_S
from localstack.sample_data import SampleRecording, upload_samples
from localstack.seaweedfs import SeaweedFS
from tests.deployments.test_prefect_server import (
    CLI,
    REPO,
    deployment,
    flow_runs,
    recording_statuses,
    wait_for_runs,
)
from tests.fixtures.prefect_server import PrefectServer, read_json
from tests.pipeline.helpers import pipeline_env

AUTOMATION = "valence-pipeline silent runs are crashed"


def cli(server: PrefectServer, *args: str) -> str:
    done = subprocess.run([CLI, *args], env=server.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def automations_named(server: PrefectServer, name: str) -> list[dict[str, Any]]:
    return [a for a in read_json(server, "POST", "/automations/filter", {}) if a["name"] == name]


def test_deploy_automations_applies_the_project_file_once(real_prefect_server: PrefectServer) -> None:
    assert cli(real_prefect_server, "deploy", "automations") == f"created: {AUTOMATION}\n"
    assert cli(real_prefect_server, "deploy", "automations") == f"updated: {AUTOMATION}\n"
    [automation] = automations_named(real_prefect_server, AUTOMATION)
    trigger = automation["trigger"]
    assert trigger["posture"] == "Proactive"
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert trigger["within"] == 90.0
    assert automation["actions"] == [
        {
            "type": "change-flow-run-state",
            "name": None,
            "state": "CRASHED",
            "message": "No heartbeat for 90 s; the flow-run process is gone.",
            "force": False,
        }
    ]


def _run(server: PrefectServer, flow_id: str, name: str, tags: list[str]) -> str:
    body = {"flow_id": flow_id, "name": name, "tags": tags, "state": {"type": "RUNNING"}}
    return str(read_json(server, "POST", "/flow_runs/", body)["id"])


def _heartbeat(server: PrefectServer, run_id: str, tags: list[str]) -> None:
    """What a flow-run process sends every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"},
        "related": [
            {"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"} for t in tags
        ],
    }
    read_json(server, "POST", "/events", [event])


def _state(server: PrefectServer, run_id: str) -> str:
    return str(read_json(server, "GET", f"/flow_runs/{run_id}")["state"]["type"])


def test_a_silent_run_is_marked_crashed(real_prefect_server: PrefectServer, tmp_path: Path) -> None:
    # The project's automation with a shorter silence (its 90 s would make a slow test).
    spec = yaml.safe_load((REPO / "deployments" / "automations.yaml").read_text())
    spec["automations"][0]["name"] = "silent runs, quick"
    spec["automations"][0]["trigger"]["within"] = 10
    quick = tmp_path / "automations.yaml"
    quick.write_text(yaml.safe_dump(spec))
    cli(real_prefect_server, "deploy", "automations", "--file", str(quick))
    server = real_prefect_server
    flow_id = str(read_json(server, "POST", "/flows/", {"name": "silent-run-test"})["id"])
    silent = _run(server, flow_id, "silent", ["valence", "nightly"])
    finished = _run(server, flow_id, "finished", ["valence"])
    other = _run(server, flow_id, "someone else's", ["other-project"])
    time.sleep(3)  # the automation has loaded (its trigger is evaluated from now on)
    for run_id, tags in (
        (silent, ["valence", "nightly"]),
        (finished, ["valence"]),
        (other, ["other-project"]),
    ):
        _heartbeat(server, run_id, tags)
    read_json(
        server, "POST", f"/flow_runs/{finished}/set_state", {"state": {"type": "COMPLETED"}, "force": True}
    )

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _state(server, silent) != "CRASHED":
        time.sleep(1)
    assert _state(server, silent) == "CRASHED"
    assert _state(server, finished) == "COMPLETED"
    assert _state(server, other) == "RUNNING"  # not this project's run


def test_serve_runs_the_upload_deployment_from_one_process(
    real_prefect_server: PrefectServer,
    seaweedfs: SeaweedFS,
    s3_client: Any,
    bucket: str,
    emu: Any,
    pg_url: str,
    tmp_path: Path,
) -> None:
    from results_store.db import upgrade

    upgrade(pg_url)
    server = real_prefect_server
    tmp = tmp_path / "tmp"  # its temporary files: none may be left once it has stopped
    tmp.mkdir()
    env = server.env(**pipeline_env(seaweedfs, emu, pg_url, tmp_path / "parquet"), TMPDIR=str(tmp))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [CLI, "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        names = (
            "nightly-ingest/nightly",
            "process-recordings/on-upload",
            "retry-failed/retry-failed",
            "backfill/backfill",
        )
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            served = {n: _maybe(server, n) for n in names}
            if all(served.values()):
                break
            time.sleep(1)
        nightly, upload = served["nightly-ingest/nightly"], served["process-recordings/on-upload"]
        assert nightly is not None and upload is not None, log_path.read_text()[-4000:]
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert nightly["global_concurrency_limit"]["limit"] == 1
        triggers = [
            a["trigger"]
            for a in read_json(server, "POST", "/automations/filter", {})
            if any(act.get("deployment_id") == upload["id"] for act in a["actions"])
        ]
        assert [t["expect"] for t in triggers] == [["valence-pipeline.recording.uploaded"]]

        upload_samples(s3_client, bucket, (SampleRecording("calls/served.wav", 6),))
        uri = f"s3://{bucket}/calls/served.wav"
        sent = subprocess.run([CLI, "notify", uri], env=env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        runs = wait_for_runs(server, upload["id"], 1)
        # The server's scheduler plans the nights from the served deployment's schedule.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not flow_runs(server, nightly["id"]):
            time.sleep(1)
        # ... and serve names them for their night (flows/names.py) within its period.
        deadline = time.monotonic() + 2 * SERVE_EVERY_S + 10
        while time.monotonic() < deadline and not _named(planned := flow_runs(server, nightly["id"])):
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)  # how a service manager stops it
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()[-4000:]
    assert "Pausing all deployments" in log_path.read_text()  # Prefect's own shutdown ran
    assert list(tmp.iterdir()) == []
    [run] = [r for r in runs if r["parameters"]["uris"] == [uri]]
    assert run["state"]["type"] == "COMPLETED", log_path.read_text()[-4000:]
    assert run["work_pool_name"] is None  # served, not through a work pool
    assert recording_statuses(pg_url) == {"calls/served.wav": "completed"}
    assert planned and {r["state"]["type"] for r in planned} == {"SCHEDULED"}
    assert _named(planned), [r["name"] for r in planned]


def _named(runs: list[dict[str, Any]]) -> bool:
    return bool(runs) and all(r["name"] == f"nightly-{r['expected_start_time'][:10]}" for r in runs)


def _maybe(server: PrefectServer, name: str) -> dict[str, Any] | None:
    try:
        return deployment(server, name)
    except Exception:  # noqa: BLE001 - 404 until serve has registered it
        return None
