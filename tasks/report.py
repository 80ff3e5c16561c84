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

from valence_client.redaction import redact
from valence_pipeline.runtime import runtime

log = logging.getLogger(__name__)

SUMMARY_KEY = "valence-pipeline-summary"
FILES_KEY = "valence-pipeline-files"
PICTURES_KEY = "valence-pipeline-pictures"

_ORDER = {"failed": 0, "rejected": 1, "superseded": 2}


@dataclass
class RunSummary:
    run_name: str
    files: list[dict[str, Any]]
    api: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    emotions: Counter[str] = field(default_factory=Counter)
    dataset_files: list[str] = field(default_factory=list)
    arrived_without_event: int | None = None
    """Nightly: new files that no upload event announced (processed all the same)."""

    def _status(self, status: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == status]

    @property
    def completed(self) -> int:
        return len(self._status("completed")) + len(self._status("stored"))

    @property
    def deferred(self) -> int:
        """Accepted but not sent: over the run's audio budget, left for a later run."""
        return len(self._status("accepted"))

    @property
    def failed(self) -> int:
        return len(self._status("failed"))

    @property
    def rejected(self) -> Counter[str]:
        return Counter((f["reason"] or "unknown").split(":")[0] for f in self._status("rejected"))

    @property
    def failed_by_provider(self) -> Counter[str]:
        """Failed files per provider that failed them (a file may count for both)."""
        out: Counter[str] = Counter()
        for f in self._status("failed"):
            out.update(f["failed_providers"] or ["before any provider call"])
        return out

    @property
    def failed_by_reason(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for f in self._status("failed"):
            out.update({_reason_code(part) for part in (f["reason"] or "unknown").split("; ")})
        return out

    @property
    def audio_hours(self) -> float:
        return sum(f["duration_s"] for f in self.files if f["status"] not in ("rejected",)) / 3600.0

    def counts(self) -> dict[str, int]:
        return {
            "seen": len(self.files),
            "accepted": len(self.files) - sum(self.rejected.values()) - self.deferred,
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
        so it is readable without scrolling sideways."""
        rows = sorted(self.files, key=lambda f: (_ORDER.get(f["status"], 9), f["file"]))
        return [
            {
                "status": f["status"],
                "reason": redact(f["reason"]),
                "file": redact(f["file"]),
                "jobs": ", ".join(f"{k}: {v}" for k, v in f["jobs"].items()),
            }
            for f in rows
        ]


def _reason_code(part: str) -> str:
    """'valsea: provider_failed: ...' -> 'valsea: provider_failed'; 'bad header' stays."""
    bits = [b.strip() for b in part.split(":")]
    return ": ".join(bits[:2]) if len(bits) > 2 else bits[0]


def build_summary(run_id: str, run_name: str, api: dict[str, int], dataset_files: list[str]) -> RunSummary:
    rt = runtime()
    store = rt.store
    return RunSummary(
        run_name=run_name,
        files=store.run_files(run_id),
        api=api,
        notes=list(store.run_flags(run_id).get("notes", [])),
        emotions=store.emotion_counts(run_id, rt.settings.min_confidence),
        dataset_files=dataset_files,
    )


@task(name="pictures", task_run_name="pictures of {day}", cache_policy=NO_CACHE)
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
    if summary.files:
        create_table_artifact(
            summary.table(), key=FILES_KEY, description=f"Per-file outcomes of {summary.run_name}"
        )
    return text
