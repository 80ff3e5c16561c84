"""Artifacts for the people watching: a run summary, a per-file table, live progress.

Everything is read back from the database at the end of the run, so the summary's counts and
the per-file table are the same facts and agree. Keys are stable (`valence-pipeline-summary`,
`valence-pipeline-files`), so the Prefect UI shows the latest on top with its history.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from valence_client.redaction import failures_redacted, redact
from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)

SUMMARY_KEY = "valence-pipeline-summary"
FILES_KEY = "valence-pipeline-files"
PICTURES_KEY = "valence-pipeline-pictures"

_ORDER = {"failed": 0, "rejected": 1, "superseded": 2}


TABLE_ROWS = 500
"""The per-file table artifact shows at most this many files: failed first, then rejected, then
the rest. The summary counts every file; every file's outcome is in the results database."""


@dataclass
class RunSummary:
    """The run's outcome, folded file by file (`add`): counts, reasons, and the first
    `table_rows` files of the per-file table. Its size does not grow with the night."""

    run_name: str
    api: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    emotions: Counter[str] = field(default_factory=Counter)
    dataset_files: list[str] = field(default_factory=list)
    arrived_without_event: int | None = None
    """Nightly: new files that no upload event announced (processed all the same)."""
    table_rows: int = TABLE_ROWS
    seen: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    failed_by_provider: Counter[str] = field(default_factory=Counter)
    """Failed files per provider that failed them (a file may count for both)."""
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    audio_seconds: float = 0.0
    _rows: list[tuple[tuple[int, str, int], dict[str, str]]] = field(default_factory=list, repr=False)
    """Candidates for the table, cut back to its first `table_rows` whenever twice as many."""

    def add(self, f: dict[str, Any]) -> None:
        """Count one file (a row of `iter_run_files`) and keep it if it is among the table's
        first `table_rows`."""
        status = f["status"]
        self.seen += 1
        self.statuses[status] += 1
        if status == "rejected":
            self.rejected[(f["reason"] or "unknown").split(":")[0]] += 1
        else:
            self.audio_seconds += f["duration_s"]
        if status == "failed":
            self.failed_by_provider.update(f["failed_providers"] or ["before any provider call"])
            self.failed_by_reason.update(
                {_reason_code(part) for part in (f["reason"] or "unknown").split("; ")}
            )
        if self.table_rows <= 0:
            return
        row = {
            "status": status,
            "reason": f["reason"],
            "file": f["file"],
            "jobs": ", ".join(f"{k}: {v}" for k, v in f["jobs"].items()),
        }
        self._rows.append(((_ORDER.get(status, 9), f["file"], self.seen), row))
        if len(self._rows) >= 2 * self.table_rows:
            self._cut()

    def _cut(self) -> None:
        self._rows.sort(key=lambda e: e[0])
        del self._rows[self.table_rows :]

    @property
    def completed(self) -> int:
        return self.statuses["completed"] + self.statuses["stored"]

    @property
    def deferred(self) -> int:
        """Accepted but not sent: over the run's audio budget, left for a later run."""
        return self.statuses["accepted"]

    @property
    def failed(self) -> int:
        return self.statuses["failed"]

    @property
    def audio_hours(self) -> float:
        return self.audio_seconds / 3600.0

    def counts(self) -> dict[str, int]:
        return {
            "seen": self.seen,
            "accepted": self.seen - sum(self.rejected.values()) - self.deferred,
            "rejected": sum(self.rejected.values()),
            "completed": self.completed,
            "failed": self.failed,
            "deferred": self.deferred,
            "audio_seconds": round(self.audio_hours * 3600),
            **self.api,
        }

    def state_message(self) -> str:
        c = self.counts()
        return f"{c['failed']} of {c['seen']} files failed ({c['completed']} completed, {c['rejected']} rejected)"

    def outcome(self) -> str:
        """One line for the summary's card in the run's Artifacts tab (the run's state message
        when files failed), so the night's outcome shows one click from the run page."""
        if self.failed:
            return self.state_message()
        c = self.counts()
        return f"{c['completed']} of {c['seen']} files completed ({c['rejected']} rejected)"

    def markdown(self) -> str:
        c = self.counts()
        lines = [
            f"# {self.run_name}",
            "",
            "| | |",
            "|---|---|",
            f"| files seen | {c['seen']} |",
            f"| completed | {c['completed']} |",
            f"| **failed** | **{c['failed']}** |",
            f"| rejected | {c['rejected']} |",
            f"| left for a later run (budget) | {c['deferred']} |",
            f"| audio hours | {self.audio_hours:.3f} |",
        ]
        if self.arrived_without_event is not None:
            lines.append(f"| new files that came without an upload event | {self.arrived_without_event} |")
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in sorted(self.api.items())]
        if self.failed:
            lines += ["", "## Failed files, by provider", ""]
            lines += [f"- {p}: {n}" for p, n in self.failed_by_provider.most_common()]
            lines += ["", "## Failed files, by reason", ""]
            lines += [f"- {r}: {n}" for r, n in self.failed_by_reason.most_common()]
        if self.rejected:
            lines += ["", "## Rejected, by reason", ""] + [
                f"- {r}: {n}" for r, n in self.rejected.most_common()
            ]
        if self.emotions:
            lines += ["", "## Most frequent emotions (confidence >= threshold)", ""]
            lines += [f"- {e}: {n} segments" for e, n in self.emotions.most_common(5)]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.dataset_files:
            lines += ["", "## Dataset files written", ""] + [f"- `{p}`" for p in self.dataset_files]
        return redact("\n".join(lines))

    def table(self) -> list[dict[str, str]]:
        """Failed files first, then rejected, then the rest; the reason right after the status
        so it is readable without scrolling sideways. At most `table_rows` files."""
        self._cut()
        return [
            {**row, "reason": redact(row["reason"]), "file": redact(row["file"])} for _, row in self._rows
        ]

    def table_description(self) -> str:
        self._cut()
        shown = len(self._rows)
        if shown < self.seen:
            return (
                f"Per-file outcomes of {self.run_name}: the first {shown} of {self.seen} files "
                "(failed first, then rejected); every file's outcome is in the results database"
            )
        return f"Per-file outcomes of {self.run_name}"


def _reason_code(part: str) -> str:
    """'valsea: provider_failed: ...' -> 'valsea: provider_failed'; 'bad header' stays."""
    bits = [b.strip() for b in part.split(":")]
    return ": ".join(bits[:2]) if len(bits) > 2 else bits[0]


def build_summary(run_id: str, run_name: str, api: dict[str, int], dataset_files: list[str]) -> RunSummary:
    rt = runtime()
    store = rt.store
    summary = RunSummary(
        run_name=run_name,
        api=api,
        notes=list(store.run_flags(run_id).get("notes", [])),
        emotions=store.emotion_counts(run_id, rt.settings.min_confidence),
        dataset_files=dataset_files,
    )
    for f in store.iter_run_files(run_id):  # a chunk at a time: no night is held whole
        summary.add(f)
    return summary


@task(name="pictures", task_run_name="pictures of {day}", cache_policy=NO_CACHE)
@failures_redacted
def draw_pictures(day: dt.date) -> str:
    """`pictures_markdown`, drawn in the run's dataset child (tasks/dataset_child.py): matplotlib and
    the PNGs stay out of the flow process, and the child's imports are paid already."""
    from tasks.dataset_child import DATASET_CHILD

    try:
        return str(DATASET_CHILD.call({"op": "pictures", "day": day.isoformat()}))
    except RuntimeError as exc:  # the child died: the summary says so, the night stands
        log.warning("pictures of %s not drawn: %s", day, exc)
        return f"_The pictures of {day} could not be drawn: {redact(str(exc))}_"


@task(name="report", task_run_name="report {summary.run_name}", cache_policy=NO_CACHE)
@failures_redacted
def publish_report(summary: RunSummary, pictures: str = "") -> str:
    """Publish the summary (with the night's `pictures` below it) and the per-file table;
    returns the summary's text (also printed by the CLI, so without the pictures)."""
    text = summary.markdown()
    create_markdown_artifact(
        f"{text}\n\n{pictures}" if pictures else text,
        key=SUMMARY_KEY,
        # The card in the run's Artifacts tab shows the description's first ~45 characters.
        description=f"{summary.outcome()}, {summary.run_name}",
    )
    if summary.seen:
        create_table_artifact(summary.table(), key=FILES_KEY, description=summary.table_description())
    return text
