"""Running a flow the way a Prefect process worker does, against a test's Prefect server.

A process worker starts `python -m prefect.engine` with `PREFECT__FLOW_RUN_ID` in its
environment; the engine loads the flow file by path from the deployment's entrypoint and
configures logging through Prefect alone: our CLI's `setup_logging` never runs. `run_as_worker`
registers a deployment of the real entrypoint (working directory: this checkout, as
`prefect.yaml` has it), creates a flow run and runs exactly that command. An optional `prelude`
is Python executed first in the same process (to simulate a failing dependency).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerRun:
    flow_run_id: str
    returncode: int
    stdout: str
    stderr: str


def current_api_url() -> str:
    """The API URL of the Prefect server this test process talks to (the harness's)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "no Prefect API: run under prefect_test_harness"
    return str(url)


def create_flow_run(entrypoint: str, parameters: dict[str, Any]) -> str:
    from prefect.client.orchestration import get_client

    flow_name = {"nightly_ingest": "nightly-ingest", "process_recordings": "process-recordings"}[
        entrypoint.rsplit(":", 1)[1]
    ]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=f"worker-test-{uuid.uuid4().hex[:8]}",
            entrypoint=entrypoint,
            path=str(REPO),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
        )
        run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    return str(run.id)


def engine_command(prelude: str = "") -> list[str]:
    code = f"{prelude}\nimport runpy\nrunpy.run_module('prefect.engine', run_name='__main__')\n"
    return [sys.executable, "-c", code]


def run_as_worker(
    entrypoint: str,
    parameters: dict[str, Any],
    env: dict[str, str],
    *,
    home: Path,
    prelude: str = "",
    timeout_s: float = 300,
) -> WorkerRun:
    """Create a flow run of `entrypoint` and run it as a process worker would, with `home` as
    its Prefect home (where Prefect keeps what it writes on the worker); wait for it."""
    flow_run_id = create_flow_run(entrypoint, parameters)
    child_env = {
        **env,
        "PREFECT_API_URL": current_api_url(),
        "PREFECT__FLOW_RUN_ID": flow_run_id,
        "PREFECT_HOME": str(home),
    }
    done = subprocess.run(
        engine_command(prelude),
        cwd=REPO,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return WorkerRun(flow_run_id, done.returncode, done.stdout, done.stderr)


def flow_run_logs(flow_run_id: str) -> list[str]:
    """Every log message the server stored for the flow run (its task runs included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while True:  # the server answers at most 200 per call
            page = client.read_logs(wanted, limit=200, offset=len(messages))
            messages.extend(log.message for log in page)
            if len(page) < 200:
                return messages


def flow_run_state_message(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
    return f"{run.state.type.value}: {run.state.message}" if run.state else "no state"
