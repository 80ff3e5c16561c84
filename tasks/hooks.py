"""Closing the `pipeline_runs` row of a run that did not close it itself.

Two ways a run's row is left `running`, two remedies:

- The flow ends badly but its process lives long enough to say so: Prefect calls the flow's
  state hooks, and these mark the row (`on_failure` -> `failed`; `on_crashed` and
  `on_cancellation` -> `crashed`, meaning "stopped before it could finish"). Attach them:
  `@flow(on_failure=[mark_run_failed], on_crashed=[mark_run_crashed],
  on_cancellation=[mark_run_crashed])`.
- The process is killed outright (SIGKILL, OOM killer, a lost machine): no hook runs. The next
  run calls `close_stale_runs(its_own_run_id)` at its start, which marks `crashed` every other
  run still `running` whose Prefect flow run is final, or that started more than
  `Settings.stale_run_after_s` ago.

A hook only touches a row that still says `running` (a run that closed itself keeps its
status) and never raises: a failing hook would only add noise to a run that already failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from results_store import repository as repo
from results_store.db import get_store
from results_store.models import RunStatus
from valence_pipeline.settings import get_settings

log = logging.getLogger(__name__)


def _store() -> Any:
    settings = get_settings()
    return get_store(settings.database_url.get_secret_value(), settings.database_reconnect_wait_s)


def mark_run(flow_run_id: str, status: RunStatus) -> bool:
    """Close the run's row with `status` if it is still running; False if nothing changed
    (no row: the run died before opening it; or the run had already closed it)."""
    try:
        with _store().session_scope() as session:
            changed = repo.end_running_run(session, flow_run_id, status=status)
    except Exception:
        log.exception("could not mark run %s %s", flow_run_id, status.value)
        return False
    if changed:
        log.warning("run %s marked %s", flow_run_id, status.value)
    return changed


def mark_run_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failed` hook."""
    mark_run(str(flow_run.id), RunStatus.FAILED)


def mark_run_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_crashed` and `on_cancellation` hook."""
    mark_run(str(flow_run.id), RunStatus.CRASHED)


def final_flow_runs(flow_run_ids: Iterable[str]) -> set[str]:
    """Those of `flow_run_ids` whose Prefect flow run is in a final state (completed, failed,
    crashed, cancelled) or unknown to the server. Ids that are not Prefect's (a run
    outside Prefect) are skipped; an unreachable server yields the empty set."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    wanted: dict[uuid.UUID, str] = {}
    for run_id in flow_run_ids:
        try:
            wanted[uuid.UUID(run_id)] = run_id
        except ValueError:
            continue
    if not wanted:
        return set()
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(wanted))))
    except Exception:
        log.warning("could not ask Prefect for the state of %d running runs", len(wanted), exc_info=True)
        return set()
    live = {run.id for run in runs if run.state is None or not run.state.is_final()}
    return {run_id for key, run_id in wanted.items() if key not in live}


def close_stale_runs(current_run_id: str | None = None, *, stale_after_s: float | None = None) -> list[str]:
    """Mark `crashed` the runs left `running` by processes that died (module doc); call at the
    start of a run with its own id (never closed). Returns the ids closed."""
    settings = get_settings()
    max_age = settings.stale_run_after_s if stale_after_s is None else stale_after_s
    keep = [current_run_id] if current_run_id else []
    with _store().session_scope() as session:
        running = [r for r in repo.running_run_ids(session) if r not in keep]
    if not running:
        return []
    final = final_flow_runs(running)
    with _store().session_scope() as session:
        closed = repo.close_stale_runs(
            session,
            started_before=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=max_age),
            final_flow_runs=final,
            keep=keep,
        )
    if closed:
        log.warning("closed %d runs left running by processes that died: %s", len(closed), ", ".join(closed))
    return closed
