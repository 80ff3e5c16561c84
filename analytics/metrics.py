"""The figures of one call (or one channel of it), from plain timeline and prosody values.

Pure functions, no database: `call_figures` takes segments and utterances and returns what an
analyst reads. Definitions (the README's analysts section says the same):

- only segments with confidence >= `min_confidence` count (the provider's advice: 0.38);
- shares are of confident *time*, per emotion; the dominant emotion has the largest share;
- the first and last thirds split the analysed span in three by time; a segment belongs to the
  third its midpoint falls in; each third's emotion is its dominant one;
- escalated: the negative share of the last third exceeds the first third's by more than
  `escalation_margin` (both thirds need confident segments);
- longest negative streak: the longest stretch of time covered without a break by confident
  negative segments (a low-confidence or non-negative segment breaks it; channels of a call
  together cover the time, so the call's streak runs across them);
- changes per minute: how often the emotion of consecutive confident segments of one channel
  differs, per minute of analysed span.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from valence_client.models import PROSODY_METRICS

TOP_EXPRESSIONS = 5
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Segment:
    start_s: float
    end_s: float
    emotion: str
    confidence: float
    channel: int | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)

    @property
    def mid_s(self) -> float:
        return (self.start_s + self.end_s) / 2


@dataclass(frozen=True, slots=True)
class Utterance:
    begin_s: float
    end_s: float
    expressions: Mapping[str, float]
    text: str = ""
    channel: int | None = None


@dataclass(frozen=True)
class Rules:
    """The settings that shape the figures."""

    min_confidence: float = 0.38
    negative_emotions: frozenset[str] = frozenset({"angry", "sad", "disgusted"})
    escalation_margin: float = 0.2


@dataclass
class CallFigures:
    segment_count: int = 0
    analysed_s: float = 0.0
    confident_s: float = 0.0
    emotion_shares: dict[str, float] = field(default_factory=dict)
    dominant_emotion: str | None = None
    first_third_emotion: str | None = None
    last_third_emotion: str | None = None
    first_third_negative: float | None = None
    last_third_negative: float | None = None
    escalated: bool = False
    longest_negative_s: float = 0.0
    changes_per_min: float = 0.0
    prosody: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(PROSODY_METRICS))
    top_expressions: dict[str, float] = field(default_factory=dict)


def call_figures(
    segments: Sequence[Segment],
    rules: Rules,
    *,
    prosody: Sequence[Mapping[str, float]] = (),
    utterances: Sequence[Utterance] = (),
) -> CallFigures:
    """The figures of these segments (one channel, or every channel of a call) and of the
    Valsea summaries and utterances that go with them (several summaries are averaged)."""
    out = CallFigures(segment_count=len(segments))
    out.prosody = _mean_prosody(prosody)
    out.top_expressions = strongest_expressions(utterances)
    if not segments:
        return out
    start = min(s.start_s for s in segments)
    end = max(s.end_s for s in segments)
    span = end - start
    out.analysed_s = _union_length((s.start_s, s.end_s) for s in segments)
    confident = [s for s in segments if s.confidence >= rules.min_confidence]
    out.confident_s = sum(s.duration_s for s in confident)
    out.emotion_shares = shares(confident)
    out.dominant_emotion = dominant(out.emotion_shares)
    if span > 0:
        first = [s for s in confident if s.mid_s < start + span / 3]
        last = [s for s in confident if s.mid_s >= end - span / 3]
        out.first_third_emotion = dominant(shares(first))
        out.last_third_emotion = dominant(shares(last))
        out.first_third_negative = negative_share(first, rules.negative_emotions)
        out.last_third_negative = negative_share(last, rules.negative_emotions)
        if out.first_third_negative is not None and out.last_third_negative is not None:
            rise = out.last_third_negative - out.first_third_negative
            out.escalated = rise > rules.escalation_margin + _EPS
        out.changes_per_min = changes(confident) / (span / 60.0)
    negative = [(s.start_s, s.end_s) for s in confident if s.emotion in rules.negative_emotions]
    out.longest_negative_s = _longest_run(negative)
    return out


def shares(segments: Iterable[Segment]) -> dict[str, float]:
    """Share of time per emotion (sums to 1; empty when there is no time)."""
    seconds: dict[str, float] = defaultdict(float)
    for s in segments:
        seconds[s.emotion] += s.duration_s
    total = sum(seconds.values())
    if total <= 0:
        return {}
    return {emotion: seconds[emotion] / total for emotion in sorted(seconds)}


def dominant(emotion_shares: Mapping[str, float]) -> str | None:
    """The emotion with the largest share (ties: alphabetical, so the answer is stable)."""
    if not emotion_shares:
        return None
    return min(emotion_shares, key=lambda e: (-emotion_shares[e], e))


def negative_share(segments: Sequence[Segment], negative: frozenset[str]) -> float | None:
    total = sum(s.duration_s for s in segments)
    if total <= 0:
        return None
    return sum(s.duration_s for s in segments if s.emotion in negative) / total


def changes(segments: Iterable[Segment]) -> int:
    """Emotion changes between consecutive confident segments, counted per channel."""
    by_channel: dict[int | None, list[Segment]] = defaultdict(list)
    for s in segments:
        by_channel[s.channel].append(s)
    count = 0
    for seq in by_channel.values():
        seq.sort(key=lambda s: s.start_s)
        count += sum(1 for a, b in itertools.pairwise(seq) if a.emotion != b.emotion)
    return count


def strongest_expressions(utterances: Sequence[Utterance], top: int = TOP_EXPRESSIONS) -> dict[str, float]:
    """The `top` expressions by their duration-weighted mean score over the utterances."""
    weighted: dict[str, float] = defaultdict(float)
    total = 0.0
    for u in utterances:
        weight = max(u.end_s - u.begin_s, _EPS)
        total += weight
        for name, score in u.expressions.items():
            weighted[name] += weight * score
    if total <= 0:
        return {}
    means = {name: value / total for name, value in weighted.items()}
    best = sorted(means, key=lambda n: (-means[n], n))[:top]
    return {name: round(means[name], 6) for name in best}


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Names by score, highest first: JSONB (PostgreSQL) does not keep the stored key order."""
    return sorted(scores, key=lambda n: (-scores[n], n))


def _mean_prosody(summaries: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    if not summaries:
        return dict.fromkeys(PROSODY_METRICS)
    return {m: sum(s[m] for s in summaries) / len(summaries) for m in PROSODY_METRICS}


def _merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + _EPS:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _union_length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(end - start for start, end in _merged(intervals))


def _longest_run(intervals: Iterable[tuple[float, float]]) -> float:
    return max((end - start for start, end in _merged(intervals)), default=0.0)
