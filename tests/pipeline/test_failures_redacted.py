"""Every task and flow of the pipeline leaves its failures without secrets: Prefect stores a
failure's text in the run's state and pickles a failed flow's exception on the worker, outside
logging (see valence_client.redaction.failures_redacted, tests/reliability/test_secrets_scan.py)."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Flow
from prefect.tasks import Task

import flows
import tasks


def _tasks_and_flows() -> dict[str, Task | Flow]:
    found: dict[str, Task | Flow] = {}
    for package in (tasks, flows):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if isinstance(value, Task | Flow) and getattr(value.fn, "__module__", "") == info.name:
                    found[f"{info.name}.{name}"] = value
    return found


def test_every_task_and_flow_redacts_its_failures() -> None:
    found = _tasks_and_flows()
    assert len(found) >= 15, sorted(found)  # the tasks and flows were found at all
    bare = [name for name, obj in found.items() if not getattr(obj.fn, "__failures_redacted__", False)]
    assert bare == []


def test_a_flow_still_validates_its_parameters_from_json() -> None:
    # The wrapper resolves the flow's annotations where the flow is written: a date stays a date.
    from datetime import date

    from flows.ingest import backfill

    params = backfill.validate_parameters({"source": "s3://b/", "start": "2026-12-01", "end": "2026-12-02"})
    assert params["start"] == date(2026, 12, 1) and params["end"] == date(2026, 12, 2)


def test_a_flow_is_versioned_by_the_file_it_is_written_in() -> None:
    # Prefect's default version hashes the function's file; the wrapper's would be redaction.py.
    from prefect.utilities.hashing import file_hash

    import flows.ingest

    versions = {obj.version for obj in _tasks_and_flows().values() if isinstance(obj, Flow)}
    assert versions == {file_hash(flows.ingest.__file__)}
