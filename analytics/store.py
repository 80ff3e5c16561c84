"""Per-call analytics in the results database: compute, store (upsert), read back, roll up.

`compute_and_store(session, recording_id, settings)` is what the pipeline calls once a
recording's results are stored: it reads the recording's current jobs (its own or those it
reuses), computes the figures of the whole call and, for a split call, of each channel with
its role, and upserts one `call_analytics` row per scope. Recomputing replaces the rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from analytics.dimensions import dimensions, from_key
from analytics.metrics import CallFigures, Rules, Segment, Utterance, call_figures
from results_store import repository as repo
from results_store.models import (
    CallAnalyticsRecord,
    CallAnalyticsRow,
    EmotionSegmentRow,
    ProsodySummaryRow,
    ProsodyUtteranceRow,
    Provider,
    Recording,
    RecordingStatus,
)
from valence_client.models import PROSODY_METRICS
from valence_pipeline.settings import Settings

CALL_SCOPE = "call"


def channel_scope(channel: int) -> str:
    return f"channel:{channel}"


def rules_of(settings: Settings) -> Rules:
    return Rules(
        min_confidence=settings.min_confidence,
        negative_emotions=frozenset(settings.negative_emotions),
        escalation_margin=settings.escalation_margin,
    )


@dataclass
class CallData:
    """A recording's stored results, by channel (None: the downmix, or an unsplit call)."""

    recording: Recording
    model: str | None = None
    segments: dict[int | None, list[Segment]] = field(default_factory=dict)
    utterances: dict[int | None, list[Utterance]] = field(default_factory=dict)
    summaries: dict[int | None, dict[str, float]] = field(default_factory=dict)

    @property
    def channels(self) -> list[int]:
        found = {c for c in (*self.segments, *self.utterances, *self.summaries) if c is not None}
        return sorted(found)

    def all_segments(self) -> list[Segment]:
        return [s for segs in self.segments.values() for s in segs]

    def all_utterances(self) -> list[Utterance]:
        return [u for utts in self.utterances.values() for u in utts]


def load_call(session: Session, recording_id: int) -> CallData:
    """The recording and the results of its current jobs."""
    recording = session.get(Recording, recording_id)
    if recording is None:
        raise LookupError(f"no recording with id {recording_id}")
    data = CallData(recording)
    for job in repo.current_jobs(session, [recording_id]).get(recording_id, []):
        if job.provider == Provider.VALENCE:
            data.model = data.model or job.model
            rows = session.execute(
                sa.select(EmotionSegmentRow)
                .where(EmotionSegmentRow.job_id == job.id)
                .order_by(EmotionSegmentRow.segment_index)
            ).scalars()
            data.segments[job.channel] = [
                Segment(r.start_s, r.end_s, r.emotion, r.confidence, job.channel) for r in rows
            ]
        else:
            summary = session.execute(
                sa.select(ProsodySummaryRow).where(ProsodySummaryRow.job_id == job.id)
            ).scalar_one_or_none()
            if summary is not None:
                data.summaries[job.channel] = {m: getattr(summary, m) for m in PROSODY_METRICS}
            utterances = session.execute(
                sa.select(ProsodyUtteranceRow)
                .where(ProsodyUtteranceRow.job_id == job.id)
                .order_by(ProsodyUtteranceRow.utterance_index)
            ).scalars()
            data.utterances[job.channel] = [
                Utterance(u.begin_s, u.end_s, dict(u.expressions), u.text, job.channel) for u in utterances
            ]
    return data


@dataclass(frozen=True)
class Scope:
    name: str
    channel: int | None
    role: str | None
    figures: CallFigures


def call_scopes(data: CallData, settings: Settings) -> list[Scope]:
    """The whole call, then each channel of a split call with its role."""
    rules = rules_of(settings)
    scopes = [
        Scope(
            CALL_SCOPE,
            None,
            None,
            call_figures(
                data.all_segments(),
                rules,
                prosody=list(data.summaries.values()),
                utterances=data.all_utterances(),
            ),
        )
    ]
    for channel in data.channels:
        summary = data.summaries.get(channel)
        figures = call_figures(
            data.segments.get(channel, []),
            rules,
            prosody=[summary] if summary is not None else [],
            utterances=data.utterances.get(channel, []),
        )
        scopes.append(
            Scope(channel_scope(channel), channel, settings.channel_roles.get(str(channel)), figures)
        )
    return scopes


def _processing_date(recording: Recording, now: dt.datetime) -> dt.date:
    return (recording.processed_at or now).astimezone(dt.UTC).date()


def compute_and_store(
    session: Session,
    recording_id: int,
    settings: Settings,
    *,
    metadata: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> list[CallAnalyticsRow]:
    """Compute and upsert the recording's analytics rows; returns them (call first), or []
    when the recording has no stored results.

    `metadata` is the object's S3 user metadata when the caller has it; without it a
    recomputation keeps the dimensions stored before (they may have come from metadata).
    """
    now = now or repo.utcnow()
    data = load_call(session, recording_id)
    rec = data.recording
    previous = {
        row.scope: row
        for row in session.execute(
            sa.select(CallAnalyticsRow).where(CallAnalyticsRow.recording_id == recording_id)
        ).scalars()
    }
    if not data.segments and not data.summaries and not data.utterances:
        # Nothing analysed (rejected, failed, not stored yet): no figures, and none left over.
        session.execute(sa.delete(CallAnalyticsRow).where(CallAnalyticsRow.recording_id == recording_id))
        return []
    use_metadata = metadata if settings.dimension_metadata else None
    if use_metadata is None and CALL_SCOPE in previous:
        dims = {**from_key(rec.key, settings.dimension_pattern), **previous[CALL_SCOPE].dimensions}
    else:
        dims = dimensions(rec.key, settings.dimension_pattern, use_metadata)
    day = _processing_date(rec, now)
    rows = [
        {
            "recording_id": recording_id,
            "scope": scope.name,
            "channel": scope.channel,
            "role": scope.role,
            "processing_date": day,
            "dimensions": dims,
            "model": data.model,
            "segment_count": scope.figures.segment_count,
            "analysed_s": scope.figures.analysed_s,
            "confident_s": scope.figures.confident_s,
            "emotion_shares": scope.figures.emotion_shares,
            "dominant_emotion": scope.figures.dominant_emotion,
            "first_third_emotion": scope.figures.first_third_emotion,
            "last_third_emotion": scope.figures.last_third_emotion,
            "first_third_negative": scope.figures.first_third_negative,
            "last_third_negative": scope.figures.last_third_negative,
            "escalated": scope.figures.escalated,
            "longest_negative_s": scope.figures.longest_negative_s,
            "changes_per_min": scope.figures.changes_per_min,
            **scope.figures.prosody,
            "top_expressions": scope.figures.top_expressions,
            "computed_at": now,
        }
        for scope in call_scopes(data, settings)
    ]
    columns = [c for c in rows[0] if c not in ("recording_id", "scope")]
    repo.upsert(session, CallAnalyticsRow, rows, key=("recording_id", "scope"), update=columns)
    stale = set(previous) - {r["scope"] for r in rows}
    if stale:  # e.g. a call analysed split before and downmixed now
        session.execute(
            sa.delete(CallAnalyticsRow).where(
                CallAnalyticsRow.recording_id == recording_id, CallAnalyticsRow.scope.in_(stale)
            )
        )
    session.expire_all()
    return list(
        session.execute(
            sa.select(CallAnalyticsRow)
            .where(CallAnalyticsRow.recording_id == recording_id)
            .order_by(CallAnalyticsRow.channel.is_not(None), CallAnalyticsRow.channel)
        ).scalars()
    )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CallSummary:
    """One call of a night with its key figures (the `call` scope) and its channels."""

    recording_id: int
    uri: str
    version: str
    call: CallAnalyticsRow
    channels: list[CallAnalyticsRow]

    @property
    def escalated_roles(self) -> list[str]:
        return [c.role or c.scope for c in self.channels if c.escalated]


def calls_on(
    session: Session,
    day: dt.date,
    *,
    escalated: bool | None = None,
    agent: str | None = None,
    queue: str | None = None,
) -> list[CallSummary]:
    """The night's calls, optionally only escalated ones (the call or any channel) or one
    agent's or queue's (from the dimensions)."""
    rows = session.execute(
        sa.select(CallAnalyticsRow, Recording)
        .join(Recording, Recording.id == CallAnalyticsRow.recording_id)
        .where(CallAnalyticsRow.processing_date == day)
        .order_by(
            CallAnalyticsRow.recording_id, CallAnalyticsRow.channel.is_not(None), CallAnalyticsRow.channel
        )
    ).all()
    by_recording: dict[int, tuple[Recording, list[CallAnalyticsRow]]] = {}
    for row, rec in rows:
        by_recording.setdefault(rec.id, (rec, []))[1].append(row)
    out: list[CallSummary] = []
    for rid, (rec, scopes) in by_recording.items():
        call = next((r for r in scopes if r.scope == CALL_SCOPE), None)
        if call is None:
            continue
        summary = CallSummary(
            rid, rec.uri, rec.object_version, call, [r for r in scopes if r.scope != CALL_SCOPE]
        )
        if escalated is not None and (call.escalated or bool(summary.escalated_roles)) != escalated:
            continue
        if agent is not None and call.dimensions.get("agent") != agent:
            continue
        if queue is not None and call.dimensions.get("queue") != queue:
            continue
        out.append(summary)
    return sorted(out, key=lambda c: c.uri)


@dataclass
class RollupRow:
    """The night's calls for one combination of dimension values."""

    dimensions: dict[str, str]
    calls: int = 0
    escalated: int = 0
    analysed_s: float = 0.0
    emotion_seconds: dict[str, float] = field(default_factory=dict)
    frustration_sum: float = 0.0
    frustration_n: int = 0

    @property
    def escalated_share(self) -> float:
        return self.escalated / self.calls if self.calls else 0.0

    @property
    def emotion_shares(self) -> dict[str, float]:
        total = sum(self.emotion_seconds.values())
        return {e: v / total for e, v in sorted(self.emotion_seconds.items())} if total else {}

    @property
    def mean_frustration(self) -> float | None:
        return self.frustration_sum / self.frustration_n if self.frustration_n else None


def daily_rollup(session: Session, day: dt.date, by: Sequence[str] = ("queue", "agent")) -> list[RollupRow]:
    """Per combination of the `by` dimensions (missing ones read "-"): calls, escalated calls
    (the call or any channel), hours analysed, time-weighted emotion shares, mean frustration."""
    groups: dict[tuple[str, ...], RollupRow] = {}
    for summary in calls_on(session, day):
        call = summary.call
        values = tuple(call.dimensions.get(name, "-") for name in by)
        row = groups.setdefault(values, RollupRow(dict(zip(by, values, strict=True))))
        row.calls += 1
        row.escalated += call.escalated or bool(summary.escalated_roles)
        row.analysed_s += call.analysed_s
        for emotion, share in call.emotion_shares.items():
            row.emotion_seconds[emotion] = row.emotion_seconds.get(emotion, 0.0) + share * call.confident_s
        if call.frustration is not None:
            row.frustration_sum += call.frustration
            row.frustration_n += 1
    return [groups[k] for k in sorted(groups)]


@dataclass(frozen=True)
class Failure:
    uri: str
    version: str
    status: str
    reason: str


def failures_on(session: Session, day: dt.date) -> list[Failure]:
    """Recordings that failed or were rejected on that day (UTC), with their reasons."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    rows = session.execute(
        sa.select(Recording)
        .where(
            Recording.status.in_([RecordingStatus.FAILED, RecordingStatus.REJECTED]),
            Recording.updated_at >= start,
            Recording.updated_at < start + dt.timedelta(days=1),
        )
        .order_by(Recording.bucket, Recording.key)
    ).scalars()
    return [Failure(r.uri, r.object_version, r.status.value, r.reason or "") for r in rows]


def dataset_records(session: Session, recording_ids: Iterable[int]) -> list[CallAnalyticsRecord]:
    """The `CALL_ANALYTICS_TABLE` rows of these recordings, from the database."""
    ids = sorted(set(recording_ids))
    out: list[CallAnalyticsRecord] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            sa.select(CallAnalyticsRow, Recording)
            .join(Recording, Recording.id == CallAnalyticsRow.recording_id)
            .where(CallAnalyticsRow.recording_id.in_(chunk))
            .order_by(CallAnalyticsRow.recording_id, CallAnalyticsRow.scope)
        ).all()
        out.extend(_record(row, rec) for row, rec in rows)
    return out


def _record(row: CallAnalyticsRow, rec: Recording) -> CallAnalyticsRecord:
    values: dict[str, Any] = {
        name: getattr(row, name)
        for name in CallAnalyticsRecord.__dataclass_fields__
        if name not in ("source_uri", "source_version")
    }
    return CallAnalyticsRecord(source_uri=rec.uri, source_version=rec.object_version, **values)
