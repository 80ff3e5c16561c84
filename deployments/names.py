"""Scheduled runs named from the moment they exist.

Prefect's server scheduler creates the nightly deployment's upcoming runs with random names
(`industrious-gecko`); a flow's `flow_run_name` applies only when the run starts, and Prefect
3.8.8 has no name template for scheduled runs. So `name_scheduled_runs` asks the server to plan
each scheduled deployment of this project now (`POST /deployments/{id}/schedule`: the runs its
scheduler would create, under the same idempotency keys, so none twice) and names every run of
the project's deployments still waiting (`nightly-2026-11-30`, as `flows.names` names it when
it starts). `valence-pipeline deploy automations` does it once after a deploy, each nightly run
at its end (the scheduler has planned another night meanwhile), and `valence-pipeline serve`
every `SERVE_EVERY_S` seconds.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flows.names import run_name

log = logging.getLogger(__name__)

PROJECT_TAG = "valence"
"""Every deployment of prefect.yaml carries it."""
SERVE_EVERY_S = 30.0


def name_scheduled_runs(client: Any = None) -> list[tuple[str, str]]:
    """Plan and name the upcoming runs of this project's deployments on the server at
    PREFECT_API_URL; returns (old name, new name) of each run renamed. A paused deployment or
    an inactive schedule is not planned (as the server's scheduler would not)."""
    from prefect.client.orchestration import get_client

    if client is None:
        with get_client(sync_client=True) as own:
            return name_scheduled_runs(own)
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterTags,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deployments = client.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[PROJECT_TAG]))
    )
    flows: dict[Any, str] = {}
    for d in deployments:
        if d.flow_id not in flows:
            flows[d.flow_id] = client.read_flow(d.flow_id).name
        if not d.paused and any(s.active for s in d.schedules or []):
            planned = client.request("POST", "/deployments/{id}/schedule", path_params={"id": d.id}, json={})
            planned.raise_for_status()
    if not deployments:
        return []
    waiting = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[d.id for d in deployments]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        )
    )
    renamed = []
    for run in waiting:
        name = run_name(flows.get(run.flow_id, ""), run.parameters, run.expected_start_time)
        if name is not None and run.name != name:
            client.update_flow_run(run.id, name=name)
            renamed.append((run.name, name))
    return renamed


def try_naming_scheduled_runs() -> None:
    """`name_scheduled_runs`, logged; a failure is only a warning (names are a courtesy)."""
    try:
        for old, new in name_scheduled_runs():
            log.info("scheduled run %s is now named %s", old, new)
    except Exception as exc:  # noqa: BLE001 - never fail a night or stop serving over a name
        log.warning("could not name the scheduled runs: %s", exc)


def keep_naming(stop: threading.Event, every_s: float = SERVE_EVERY_S) -> threading.Thread:
    """A daemon thread naming the scheduled runs now and every `every_s` until `stop` is set."""

    def loop() -> None:
        while True:
            try_naming_scheduled_runs()
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=loop, name="name-scheduled-runs", daemon=True)
    thread.start()
    return thread
