"""What a run of each flow is called: the flow's `flow_run_name` when the run starts, and
`deployments.names` for a run still waiting in the schedule, so both give the same name."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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
