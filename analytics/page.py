"""The night's report as one self-contained HTML page, and the `calls` listing as text.

The page needs no network to open: CSS is inline and every picture is a `data:` URI. It shows
the rollup by dimensions, the escalated calls with their timelines and figures, every call's
key figures, and the recordings that failed or were rejected with their reasons.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

from analytics.metrics import ranked
from analytics.pictures import Picture, data_uri, night_pictures, picture_name
from analytics.store import CallSummary, Failure, RollupRow, calls_on, daily_rollup, failures_on
from results_store.models import CallAnalyticsRow
from valence_pipeline.settings import Settings

NONE = "\u2013"  # an en dash: "no value" in the page's tables
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.summary { color: #555; } .summary b { color: #222; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0 1rem; font-size: 13px; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f6f6f6; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { color: #fff; background: #d62728; border-radius: 3px; padding: 0 .4rem; font-size: 12px; }
.call { border: 1px solid #e3e3e3; border-radius: 6px; padding: .4rem 1rem 1rem; margin: 1rem 0; }
.call h3 { font-size: 1rem; word-break: break-all; } img { max-width: 100%; height: auto; }
.dims { color: #666; font-size: 12px; } .none { color: #888; font-style: italic; }
"""


def _pct(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _escalated(c: CallSummary) -> bool:
    return c.call.escalated or bool(c.escalated_roles)


def _dims(dimensions: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dimensions.items()))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rollup_table(rollup: Sequence[RollupRow]) -> str:
    if not rollup:
        return '<p class="none">No calls analysed on this day.</p>'
    names = list(rollup[0].dimensions)
    rows = []
    for r in rollup:
        top = ranked(r.emotion_shares)[:3]
        rows.append(
            [escape(r.dimensions[n]) for n in names]
            + [
                str(r.calls),
                str(r.escalated),
                _pct(r.escalated_share),
                f"{r.analysed_s / 3600:.2f}",
                escape(", ".join(f"{e} {_pct(r.emotion_shares[e])}" for e in top)),
                _num(r.mean_frustration),
            ]
        )
    headers = [*names, "calls", "escalated", "escalated %", "hours", "emotions (time)", "frustration"]
    return _table(headers, rows, numeric=set(range(len(names), len(names) + 4)) | {len(names) + 5})


def _scope_rows(rows: Sequence[CallAnalyticsRow]) -> str:
    body = []
    for r in rows:
        who = (
            "whole call" if r.channel is None else f"channel {r.channel}" + (f" ({r.role})" if r.role else "")
        )
        body.append(
            [
                escape(who),
                _clock(r.analysed_s),
                escape(r.dominant_emotion or NONE),
                escape(f"{r.first_third_emotion or '-'} → {r.last_third_emotion or '-'}"),
                f"{_pct(r.first_third_negative)} → {_pct(r.last_third_negative)}",
                '<span class="flag">escalated</span>' if r.escalated else "",
                f"{r.longest_negative_s:.0f} s",
                _num(r.changes_per_min, 1),
                _num(r.frustration),
                escape(", ".join(ranked(r.top_expressions)[:3])),
            ]
        )
    headers = ["scope", "analysed", "dominant", "first → last third", "negative share", "", "longest negative",
               "changes/min", "frustration", "strongest expressions"]  # fmt: skip
    return _table(headers, body, numeric={1, 6, 7, 8})


def _call_section(c: CallSummary, picture: Picture | None) -> str:
    rows = [c.call, *c.channels]
    img = (
        f'<img class="timeline" src="{data_uri(picture.png)}" alt="emotion timeline of {escape(c.uri)}">'
        if picture is not None
        else ""
    )
    return (
        f'<section class="call escalated" data-uri="{escape(c.uri)}">'
        f"<h3>{escape(c.uri)}</h3>"
        f'<div class="dims">{escape(_dims(c.call.dimensions))} · version {escape(c.version)}</div>'
        f"{_scope_rows(rows)}{img}</section>"
    )


def _calls_table(calls: Sequence[CallSummary]) -> str:
    if not calls:
        return '<p class="none">No calls.</p>'
    rows = [
        [
            escape(c.uri),
            escape(c.call.dimensions.get("queue", NONE)),
            escape(c.call.dimensions.get("agent", NONE)),
            _clock(c.call.analysed_s),
            escape(c.call.dominant_emotion or NONE),
            escape(f"{c.call.first_third_emotion or '-'} → {c.call.last_third_emotion or '-'}"),
            escape(", ".join((["call"] if c.call.escalated else []) + c.escalated_roles)) or "",
            f"{c.call.longest_negative_s:.0f} s",
            _num(c.call.frustration),
        ]
        for c in calls
    ]
    return _table(
        ["recording", "queue", "agent", "analysed", "dominant", "first → last", "escalated", "longest negative",
         "frustration"],
        rows,
        numeric={3, 7, 8},
    )  # fmt: skip


def _failures_table(failures: Sequence[Failure]) -> str:
    if not failures:
        return '<p class="none">None.</p>'
    rows = [[escape(f.uri), escape(f.version), escape(f.status), escape(f.reason)] for f in failures]
    return _table(["recording", "version", "status", "reason"], rows)


def render_night(session: Any, day: dt.date, settings: Settings) -> str:
    """The whole page for one processing day (UTC)."""
    calls = calls_on(session, day)
    failures = failures_on(session, day)
    rollup = daily_rollup(session, day)
    pictures = night_pictures(session, day, settings, only_escalated=True)
    by_name = {p.name: p for p in pictures}
    escalated = [c for c in calls if _escalated(c)]
    hours = sum(c.call.analysed_s for c in calls) / 3600
    distribution = pictures[0]
    sections = "".join(_call_section(c, by_name.get(picture_name(c.uri, c.recording_id))) for c in escalated)
    title = f"Calls of {day.isoformat()}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="summary"><b id="calls-count">{len(calls)}</b> calls analysed ({hours:.2f} h of audio),
<b id="escalated-count">{len(escalated)}</b> escalated, <b id="failures-count">{len(failures)}</b> failed or rejected.
A call escalates when the share of negative emotions ({escape(", ".join(settings.negative_emotions))}) in its
last third exceeds its first third's by more than {settings.escalation_margin * 100:.0f} points
(segments with confidence ≥ {settings.min_confidence:g}).</p>
<img id="distribution" src="{data_uri(distribution.png)}" alt="emotion distribution of the night">
<h2>By {escape(" and ".join(rollup[0].dimensions) if rollup else "dimension")}</h2>
{_rollup_table(rollup)}
<h2 id="escalated">Escalated calls</h2>
{sections or '<p class="none">No call escalated.</p>'}
<h2>All calls</h2>
{_calls_table(calls)}
<h2 id="failures">Failures</h2>
{_failures_table(failures)}
<p class="dims">Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by valence-pipeline.</p>
</body></html>
"""


def render_calls(calls: Sequence[CallSummary]) -> str:
    """The `calls` command's listing: one line per call with its key figures."""
    if not calls:
        return "no calls\n"
    header = ("recording", "queue", "agent", "len", "dominant", "first→last", "neg% first→last", "streak",
              "chg/min", "frustr", "escalated")  # fmt: skip
    lines = [header]
    for c in calls:
        r = c.call
        lines.append(
            (
                c.uri,
                r.dimensions.get("queue", "-"),
                r.dimensions.get("agent", "-"),
                _clock(r.analysed_s),
                r.dominant_emotion or "-",
                f"{r.first_third_emotion or '-'}→{r.last_third_emotion or '-'}",
                f"{_pct(r.first_third_negative)}→{_pct(r.last_third_negative)}",
                f"{r.longest_negative_s:.0f}s",
                _num(r.changes_per_min, 1),
                _num(r.frustration),
                ",".join((["call"] if r.escalated else []) + c.escalated_roles) or "-",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    return "\n".join(text) + f"\n{len(calls)} calls\n"
