"""`valence-pipeline serve`: every deployment in prefect.yaml served from one process, for a
small installation with no work pool or worker (Prefect's `serve`).

The deployments are built from prefect.yaml itself (entrypoints, parameters, schedules,
triggers, concurrency, the work pool's environment), so the served and the deployed
installation cannot drift apart. Pull steps do not apply: the process runs its own code.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import yaml


def _flow(entrypoint: str) -> Any:
    """`flows/ingest.py:nightly_ingest` -> the flow object, imported as a module."""
    path, _, name = entrypoint.partition(":")
    module = path.removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), name)


def served_deployments(prefect_file: Path) -> list[Any]:
    """A RunnerDeployment for each deployment in the file. The work pool's shared
    `job_variables.env` (the heartbeat setting) becomes this process's environment, which flow
    runs inherit."""
    from prefect.client.schemas.schedules import construct_schedule
    from prefect.events import DeploymentEventTrigger

    config = yaml.safe_load(prefect_file.read_text())
    # The pool's shared environment only: one deployment's own (the nightly's hand-off of
    # batches to the pool) means nothing in one process, and would apply to every flow here.
    pool = (config.get("definitions") or {}).get("work_pool") or {}
    for name, value in ((pool.get("job_variables") or {}).get("env") or {}).items():
        os.environ.setdefault(name, str(value))
    out = []
    for spec in config.get("deployments", []):
        schedules = [
            construct_schedule(cron=s["cron"], timezone=s.get("timezone"))
            for s in spec.get("schedules") or []
        ]
        triggers = [
            DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
            for t in spec.get("triggers") or []
        ]
        out.append(
            _flow(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters"),
                schedules=schedules or None,
                triggers=triggers or None,
                concurrency_limit=spec.get("concurrency_limit"),
            )
        )
    return out


def serve_all(prefect_file: Path, limit: int | None = None) -> None:
    """Serve until stopped (Ctrl-C, or SIGTERM as from a service manager), naming the
    scheduled runs meanwhile (flows/names.py). Leaves no temporary files behind."""
    import shutil
    import tempfile
    import threading

    from prefect import serve

    from flows.names import keep_naming

    # Prefect's runner keeps a scratch folder under the temporary directory and, when stopped
    # (its own SIGTERM handler, or Ctrl-C), does not remove it: its removal follows a step that
    # the stop cancels. One `runner_storage/<uuid>` was left in /tmp per stop; here it lies in
    # a folder of this process's, removed as it ends.
    scratch = tempfile.mkdtemp(prefix="valence-pipeline-serve-")
    tempfile.tempdir = scratch
    stop = threading.Event()
    keep_naming(stop)
    try:
        serve(*served_deployments(prefect_file), limit=limit)
    finally:
        stop.set()
        tempfile.tempdir = None
        shutil.rmtree(scratch, ignore_errors=True)
