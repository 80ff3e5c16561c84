"""Plain-text renderings of `lineage_for_uri` and `timeline_for_uri` for the CLI."""

from __future__ import annotations

import datetime as dt
import json

from results_store.records import (
    JobView,
    OutputView,
    RecordingLineage,
    RecordingView,
    RunView,
    SegmentView,
    Timeline,
    UtteranceView,
)

TOP_EXPRESSIONS = 3
TEXT_WIDTH = 48


def _ts(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:04.1f}"


def _channel(channel: int | None) -> str:
    return "-" if channel is None else str(channel)


def describe_recording(rec: RecordingView) -> str:
    facts = [f"recording #{rec.id}", f"etag {rec.etag}", _size(rec.size_bytes)]
    if rec.sha256:
        facts.append(f"sha256 {rec.sha256[:12]}…")
    if rec.duration_s is not None:
        facts.append(f"{rec.duration_s:.1f} s")
    if rec.sample_rate:
        facts.append(f"{rec.sample_rate} Hz")
    if rec.channels:
        facts.append(f"{rec.channels} ch")
    return f"version {rec.object_version} ({', '.join(facts)})"


# --------------------------------------------------------------------------- lineage


def render_lineage(uri: str, chains: list[RecordingLineage]) -> str:
    lines = [uri]
    for chain in chains:
        lines.extend(_render_chain(chain))
    return "\n".join(lines) + "\n"


def _render_chain(chain: RecordingLineage) -> list[str]:
    rec = chain.recording
    status = f"status {rec.status.value}" + (f" ({rec.reason})" if rec.reason else "")
    lines = [
        f"  {describe_recording(rec)}",
        f"    {status}; discovered {_ts(rec.discovered_at)}, processed {_ts(rec.processed_at)}",
    ]
    for source in chain.reused_from:
        lines.append(
            f"    reuses results of {source.uri} version {source.object_version} "
            f"(recording #{source.id}, same sha256): nothing was sent to a provider again"
        )
    by_job: dict[int | None, list[OutputView]] = {}
    for output in chain.outputs:
        by_job.setdefault(output.job_id, []).append(output)
    for job in chain.jobs:
        lines.extend(_render_job(job, rec.id))
        lines.extend(f"        -> {_render_output(o)}" for o in by_job.get(job.id, []))
    if None in by_job:
        lines.append("    outputs not tied to one job:")
        lines.extend(f"        -> {_render_output(o)}" for o in by_job[None])
    if chain.runs:
        lines.append("    runs:")
        lines.extend(f"      {_render_run(run)}" for run in chain.runs)
    return lines


def _render_job(job: JobView, recording_id: int) -> list[str]:
    owner = "" if job.recording_id == recording_id else f" (of recording #{job.recording_id})"
    lines = [
        f"    job #{job.id}{owner} {job.provider.value} {job.model or '(model not reported)'} external id {job.external_id}, "
        f"channel {_channel(job.channel)}: {job.status.value} after {job.attempts} attempt(s)",
        f"      submitted {_ts(job.submitted_at)}, completed {_ts(job.completed_at)}; "
        f"run {job.flow_run_id or '-'}, task run {job.task_run_id or '-'}",
    ]
    if job.error_code or job.error_message:
        lines.append(f"      error {job.error_code or '-'}: {job.error_message or ''}")
    return lines


def _render_output(output: OutputView) -> str:
    rows = "" if output.row_count is None else f", {output.row_count} row(s)"
    state = f" [superseded {_ts(output.superseded_at)}]" if output.superseded_at else ""
    kind = " reused" if output.kind.value == "reused_from" else ""
    version = "" if output.table_version is None else f" (delta version {output.table_version})"
    return (
        f"{output.output_kind.value}{kind} {output.table_name}{rows}: {output.uri}{version} "
        f"(run {output.flow_run_id or '-'}){state}"
    )


def _render_run(run: RunView) -> str:
    counts = json.dumps(run.counts, sort_keys=True) if run.counts else "{}"
    return (
        f"{run.flow_run_id}: {run.trigger.value} run of {run.deployment or '(no deployment)'}, {run.status.value}, "
        f"{_ts(run.started_at)} -> {_ts(run.ended_at)}, code {run.code_version}, "
        f"settings {run.settings_hash}, counts {counts}"
    )


# --------------------------------------------------------------------------- timeline


def render_timeline(timeline: Timeline) -> str:
    rec = timeline.recording
    lines = [f"{rec.uri}  {describe_recording(rec)}"]
    if timeline.reused_from is not None:
        lines.append(f"results reused from {timeline.reused_from.uri} (recording #{timeline.reused_from.id})")
    for summary in timeline.summaries:
        scores = "  ".join(f"{name} {value:.2f}" for name, value in summary.scores.items())
        lines.append(
            f"prosody summary [ch {_channel(summary.channel)}]: {scores}  (job {summary.external_job_id})"
        )
    if not timeline.segments and not timeline.utterances:
        lines.append("no results stored for this version")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append(
        f"{'ch':>2}  {'start':>7}  {'end':>7}  {'emotion':<10} {'conf':>5}  | prosody (utterance, top expressions)"
    )
    for segment, utterance in _pair(timeline.segments, timeline.utterances):
        lines.append(_row(segment, utterance))
    return "\n".join(lines) + "\n"


def _pair(
    segments: list[SegmentView], utterances: list[UtteranceView]
) -> list[tuple[SegmentView | None, UtteranceView | None]]:
    """Each segment beside the utterance overlapping it most (same channel, or any when either
    is a downmix); utterances that overlap no segment get rows of their own, in time order."""
    rows: list[tuple[float, SegmentView | None, UtteranceView | None]] = []
    shown: set[int] = set()
    for seg in segments:
        best, best_overlap = None, 0.0
        for i, utt in enumerate(utterances):
            if seg.channel is not None and utt.channel is not None and seg.channel != utt.channel:
                continue
            overlap = min(seg.end_s, utt.end_s) - max(seg.start_s, utt.begin_s)
            if overlap > best_overlap:
                best, best_overlap = i, overlap
        if best is not None:
            shown.add(best)
        rows.append((seg.start_s, seg, None if best is None else utterances[best]))
    rows.extend((utt.begin_s, None, utt) for i, utt in enumerate(utterances) if i not in shown)
    rows.sort(key=lambda r: (r[0], r[1] is None))
    return [(seg, utt) for _start, seg, utt in rows]


def _row(segment: SegmentView | None, utterance: UtteranceView | None) -> str:
    if segment is not None:
        left = (
            f"{_channel(segment.channel):>2}  {_clock(segment.start_s):>7}  {_clock(segment.end_s):>7}  "
            f"{segment.emotion:<10} {segment.confidence:>5.2f}"
        )
    else:
        assert utterance is not None
        left = (
            f"{_channel(utterance.channel):>2}  {_clock(utterance.begin_s):>7}  {_clock(utterance.end_s):>7}  "
            + (" " * 16)
        )
    return f"{left}  | {_describe_utterance(utterance)}".rstrip()


def _describe_utterance(utterance: UtteranceView | None) -> str:
    if utterance is None:
        return ""
    text = utterance.text if len(utterance.text) <= TEXT_WIDTH else utterance.text[: TEXT_WIDTH - 1] + "…"
    top = sorted(utterance.expressions.items(), key=lambda kv: kv[1], reverse=True)[:TOP_EXPRESSIONS]
    return f'"{text}" ' + ", ".join(f"{name} {score:.2f}" for name, score in top)
