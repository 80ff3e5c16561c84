"""Per-call analytics (Prefect-free): what each call's emotions mean, daily rollups, pictures.

Reads the results database (timeline and prosody rows), writes `call_analytics`. The pipeline
calls `compute_and_store(session, recording_id, settings)` once a recording's results are
stored; the `report` and `calls` commands read what it wrote.
"""

from analytics.store import (
    CallSummary,
    RollupRow,
    calls_on,
    compute_and_store,
    daily_rollup,
    dataset_records,
    failures_on,
)

__all__ = [
    "CallSummary",
    "RollupRow",
    "calls_on",
    "compute_and_store",
    "daily_rollup",
    "dataset_records",
    "failures_on",
]
