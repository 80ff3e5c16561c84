"""Artifacts for the people watching: a run summary, a per-file table, live progress.

Keys are stable (`valence-pipeline-summary`, `valence-pipeline-files`), so the Prefect UI's
Artifacts page shows the latest summary on top with every earlier one in its history.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks.persist import RecordingOutcome
from valence_client.redaction import redact

log = logging.getLogger(__name__)

SUMMARY_KEY = "valence-pipeline-summary"
FILES_KEY = "valence-pipeline-files"
PROGRESS_KEY = "valence-pipeline-progress"


@dataclass
class RunSummary:
    run_name: str
    seen: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    outcomes: list[RecordingOutcome] = field(default_factory=list)
    deferred: int = 0
    api: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parquet_files: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(o.status == "completed" for o in self.outcomes)

    @property
    def failed(self) -> Counter[str]:
        return Counter((o.reason or "unknown").split(":")[0] for o in self.outcomes if o.status == "failed")

    @property
    def audio_hours(self) -> float:
        return sum(o.duration_s for o in self.outcomes) / 3600.0

    def counts(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "accepted": len(self.outcomes),
            "rejected": sum(self.rejected.values()),
            "completed": self.completed,
            "failed": sum(self.failed.values()),
            "deferred": self.deferred,
            "audio_seconds": round(self.audio_hours * 3600),
            **self.api,
        }

    def markdown(self) -> str:
        emotions: Counter[str] = Counter()
        for o in self.outcomes:
            emotions.update(o.emotions)
        lines = [
            f"# {self.run_name}",
            "",
            "| | |",
            "|---|---|",
            f"| files seen | {self.seen} |",
            f"| accepted | {len(self.outcomes)} |",
            f"| rejected | {sum(self.rejected.values())} |",
            f"| completed | {self.completed} |",
            f"| failed | {sum(self.failed.values())} |",
            f"| left for a later run (budget) | {self.deferred} |",
            f"| audio hours | {self.audio_hours:.3f} |",
        ]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in sorted(self.api.items())]
        if self.rejected:
            lines += ["", "## Rejected, by reason", ""] + [
                f"- {r}: {n}" for r, n in self.rejected.most_common()
            ]
        if self.failed:
            lines += ["", "## Failed, by reason", ""] + [f"- {r}: {n}" for r, n in self.failed.most_common()]
        if emotions:
            lines += ["", "## Most frequent emotions (confidence >= threshold)", ""]
            lines += [f"- {e}: {n} segments" for e, n in emotions.most_common(5)]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.parquet_files:
            lines += ["", "## Parquet written", ""] + [f"- `{p}`" for p in self.parquet_files]
        return redact("\n".join(lines))


def file_rows(summary: RunSummary, rejected_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [
        {
            "file": o.uri,
            "version": o.version,
            "status": o.status,
            "jobs": ", ".join(f"{k}: {v}" for k, v in o.jobs.items()),
            "reason": o.reason or "",
        }
        for o in summary.outcomes
    ]
    return [*rows, *rejected_rows]


@task(name="report", task_run_name="report {summary.run_name}", cache_policy=NO_CACHE)
def publish_report(summary: RunSummary, rejected_rows: list[dict[str, Any]]) -> str:
    """Publish the summary and the per-file table; returns the markdown (also printed by the CLI)."""
    text = summary.markdown()
    create_markdown_artifact(text, key=SUMMARY_KEY, description=f"Summary of {summary.run_name}")
    create_table_artifact(
        [{k: redact(str(v)) for k, v in row.items()} for row in file_rows(summary, rejected_rows)],
        key=FILES_KEY,
        description=f"Per-file outcomes of {summary.run_name}",
    )
    return text


class Progress:
    """A progress artifact updated in place while a run works."""

    def __init__(self, total: int, description: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.id: UUID = create_progress_artifact(0.0, key=PROGRESS_KEY, description=description)  # type: ignore[assignment]

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, min(100.0, 100.0 * self.done / self.total))
