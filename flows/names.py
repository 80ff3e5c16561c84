"""What each run is called, and naming the runs on the server before they start.

A run is named for what it does (`nightly-2026-11-30`, `upload s3://bucket/key`): by the flow's
`flow_run_name` when it starts (`run_name` below), and on the server while it still waits, so
both give the same name. Prefect 3.8.8 has no name template for runs it creates: its scheduler
creates the coming nights, the UI's quick run and the upload trigger their runs, all with
random names (`industrious-gecko`). So:

- `name_scheduled_runs` asks the server to plan each scheduled deployment of this project now
  (`POST /deployments/{id}/schedule`: the runs its scheduler would create, under the same
  idempotency keys, so none twice) and names every run of the project's deployments still
  waiting. `valence-pipeline deploy automations` does it once after a deploy, each nightly run
  at its end (the scheduler has planned another night meanwhile), and `keep_naming` every
  `SERVE_EVERY_S` seconds.
- `name_runs_as_created` follows the server's event stream: each `prefect.flow-run.Scheduled`
  event of a run tagged `valence` gets the run named in the same second, while it waits.

`valence-pipeline serve` runs `keep_naming` (both); with a work pool,
`valence-pipeline deploy name-runs` is the small process beside the server that does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

DAY_NAMED = {"nightly-ingest": "nightly", "retry-failed": "retry-failed", "backfill": "backfill"}
"""Flows whose runs are named for their day (`nightly-2026-11-30`)."""


def day_name(prefix: str, when: datetime) -> str:
    """`nightly-2026-11-30`: the UTC day the run is scheduled for (the nightly schedule is in
    UTC), so a scheduled run keeps its name when it starts, whatever the machine's zone."""
    return f"{prefix}-{when.astimezone(UTC).date().isoformat()}"


def upload_name(uris: list[str]) -> str:
    """`upload s3://bucket/key` for an upload event's run (several objects: how many)."""
    return f"upload {uris[0]}" if len(uris) == 1 else f"upload {len(uris)} objects"


def run_name(flow_name: str, parameters: Mapping[str, Any], when: datetime) -> str | None:
    """The name of a run of `flow_name` scheduled for `when`; None for a flow whose runs are
    named by whoever creates them (`process-batch`: by its night)."""
    if flow_name == "process-recordings":
        return upload_name(list(parameters.get("uris") or []))
    prefix = DAY_NAMED.get(flow_name)
    return None if prefix is None else day_name(prefix, when)


log = logging.getLogger(__name__)

PROJECT_TAG = "valence"
"""Every deployment of prefect.yaml carries it."""
SERVE_EVERY_S = 30.0
SCHEDULED_EVENT = "prefect.flow-run.Scheduled"
RECONNECT_AFTER_S = 5.0
"""After the event stream is lost for good (server restarted longer than the subscriber's own
reconnection attempts): wait, then subscribe again. The periodic pass names what was missed."""


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


async def name_waiting_run(client: Any, run_id: UUID, flows: dict[Any, str]) -> tuple[str, str] | None:
    """Name one run of this project if it still waits (Scheduled); returns (old, new) when
    renamed. A run already started is named by its flow (`flows.names`), so it is left alone."""
    from prefect.client.schemas.objects import StateType

    run = await client.read_flow_run(run_id)
    if run.state is None or run.state.type != StateType.SCHEDULED:
        return None
    if run.flow_id not in flows:
        flows[run.flow_id] = (await client.read_flow(run.flow_id)).name
    name = run_name(flows[run.flow_id], run.parameters, run.expected_start_time)
    if name is None or run.name == name:
        return None
    await client.update_flow_run(run_id, name=name)
    return run.name, name


async def name_runs_as_created(stop: threading.Event | None = None) -> None:
    """Follow the server's events and name each run of this project as it is created, until
    `stop` is set (checked at each event) or forever."""
    from prefect.client.orchestration import get_client
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    only_ours = EventFilter(
        event=EventNameFilter(name=[SCHEDULED_EVENT]),
        related=EventRelatedFilter(resources_in_roles=[(f"prefect.tag.{PROJECT_TAG}", "tag")]),
    )
    flows: dict[Any, str] = {}
    while stop is None or not stop.is_set():
        try:
            async with (
                get_client() as client,
                get_events_subscriber(filter=only_ours, reconnect_on_clean_close=True) as events,
            ):
                log.info("following the server's events: new runs are named as they are created")
                async for event in events:
                    if stop is not None and stop.is_set():
                        return
                    run_id = UUID(event.resource.id.removeprefix("prefect.flow-run."))
                    renamed = await name_waiting_run(client, run_id, flows)
                    if renamed is not None:
                        log.info("new run %s is now named %s", *renamed)
        except Exception as exc:  # noqa: BLE001 - a lost stream is retried; names are a courtesy
            log.warning("lost the server's event stream (%s); subscribing again", exc)
        await asyncio.sleep(RECONNECT_AFTER_S)


def try_naming_scheduled_runs() -> None:
    """`name_scheduled_runs`, logged; a failure is only a warning (names are a courtesy)."""
    try:
        for old, new in name_scheduled_runs():
            log.info("scheduled run %s is now named %s", old, new)
    except Exception as exc:  # noqa: BLE001 - never fail a night or stop serving over a name
        log.warning("could not name the scheduled runs: %s", exc)


def keep_naming(stop: threading.Event, every_s: float = SERVE_EVERY_S) -> list[threading.Thread]:
    """Daemon threads naming this project's runs until `stop` is set: each new run as its event
    arrives, and the scheduled ones (planned ahead) now and every `every_s` (0: never, when
    another process plans them)."""

    def loop() -> None:
        while True:
            try_naming_scheduled_runs()
            if stop.wait(every_s):
                return

    threads = [
        threading.Thread(
            target=lambda: asyncio.run(name_runs_as_created(stop)), name="name-new-runs", daemon=True
        )
    ]
    if every_s > 0:
        threads.append(threading.Thread(target=loop, name="name-scheduled-runs", daemon=True))
    for thread in threads:
        thread.start()
    return threads
