"""Pictures of a night: each call's emotion timeline and the night's emotion distribution.

PNG bytes from matplotlib's Agg backend (no display needed), written beside the dataset under
`<output>/pictures/<date>/` (a local folder or an s3:// prefix, through the dataset's own
`results_store.storage` helper), and shown in the Prefect UI as a markdown artifact whose
images are inline `data:image/png;base64,...` URIs (the UI renders markdown images; an inline
image needs no file server the UI's browser can reach).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first
from matplotlib.patches import Patch

from analytics.metrics import Segment, Utterance, ranked
from analytics.store import CallData, CallSummary, calls_on, load_call
from valence_pipeline.settings import Settings

EMOTION_COLOURS: dict[str, str] = {
    "angry": "#d62728",
    "sad": "#1f77b4",
    "disgusted": "#8c564b",
    "neutral": "#b0b0b0",
    "calm": "#17becf",
    "happy": "#2ca02c",
    "surprised": "#ff7f0e",
}
OTHER_COLOUR = "#9467bd"
LOW_CONFIDENCE_COLOUR = "#eeeeee"
DPI = 100
MIN_LABEL_FRACTION = 0.06
"""An utterance gets its label when it spans at least this fraction of the picture's width."""


def colour(emotion: str) -> str:
    return EMOTION_COLOURS.get(emotion, OTHER_COLOUR)


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def timeline_png(
    data: CallData, *, min_confidence: float, roles: Mapping[str, str] | None = None, title: str = ""
) -> bytes:
    """One lane pair per channel (one for a downmixed call): the emotion of each 5 s segment
    (pale when under `min_confidence`), and beneath it the prosody utterances labelled with
    their strongest expression."""
    lanes: list[int | None] = list(data.channels) or [None]
    end = max([s.end_s for s in data.all_segments()] + [u.end_s for u in data.all_utterances()] + [1.0])
    fig, axes = plt.subplots(
        len(lanes), 1, figsize=(10, 1.6 * len(lanes) + 1.0), squeeze=False, sharex=True, layout="constrained"
    )
    seen: set[str] = set()
    for ax, channel in zip(axes[:, 0], lanes, strict=True):
        segments = data.segments.get(channel, [])
        if channel is None and not segments and len(data.segments) == 1:
            segments = next(iter(data.segments.values()))
        _draw_segments(ax, segments, min_confidence, seen)
        _draw_utterances(ax, data.utterances.get(channel, []), end)
        name = "call" if channel is None else f"ch{channel} {(roles or {}).get(str(channel), '')}".strip()
        ax.set_yticks([1.5, 0.5], [f"{name}\nemotion", "prosody"])
        ax.set_ylim(0, 2)
        ax.set_xlim(0, end)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds")
    handles = [Patch(color=colour(e), label=e) for e in sorted(seen)]
    handles.append(Patch(color=LOW_CONFIDENCE_COLOUR, label=f"confidence < {min_confidence:g}"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def _draw_segments(ax: plt.Axes, segments: Sequence[Segment], min_confidence: float, seen: set[str]) -> None:
    # One collection per colour, not one per segment: an hour is 720 segments per channel.
    spans: dict[str, list[tuple[float, float]]] = {}
    for s in segments:
        confident = s.confidence >= min_confidence
        if confident:
            seen.add(s.emotion)
        key = colour(s.emotion) if confident else LOW_CONFIDENCE_COLOUR
        spans.setdefault(key, []).append((s.start_s, s.duration_s))
    edge = "white" if len(segments) <= 120 else "none"  # separators only where they can be seen
    for face, bars in spans.items():
        ax.broken_barh(bars, (1.05, 0.9), facecolors=face, edgecolors=edge, linewidth=0.5)


def _draw_utterances(ax: plt.Axes, utterances: Sequence[Utterance], span_s: float) -> None:
    if not utterances:
        return
    bars = [(u.begin_s, u.end_s - u.begin_s) for u in utterances]
    ax.broken_barh(bars, (0.1, 0.8), facecolors="#dde6f3", edgecolors="#7a8fb3", linewidth=0.5)
    # Label only utterances wide enough to hold their strongest expression's name.
    for u in utterances:
        top = ranked(u.expressions)[:1]
        if top and (u.end_s - u.begin_s) >= span_s * MIN_LABEL_FRACTION:
            ax.text(
                (u.begin_s + u.end_s) / 2, 0.5, top[0], ha="center", va="center", fontsize=7, clip_on=True
            )


def distribution_png(calls: Sequence[CallSummary], *, title: str = "") -> bytes:
    """The night's time per emotion (confident segments of every call), and how many calls
    escalated."""
    seconds: dict[str, float] = {}
    for c in calls:
        for emotion, share in c.call.emotion_shares.items():
            seconds[emotion] = seconds.get(emotion, 0.0) + share * c.call.confident_s
    total = sum(seconds.values())
    emotions = sorted(seconds, key=lambda e: -seconds[e])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    shares = [seconds[e] / total * 100 if total else 0.0 for e in emotions]
    bars = ax.barh(emotions, shares, color=[colour(e) for e in emotions])
    for bar, share, emotion in zip(bars, shares, emotions, strict=True):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2,
                f"{share:.0f}% ({seconds[emotion] / 60:.1f} min)", va="center", fontsize=8)  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlim(0, max([*shares, 1.0]) * 1.3)
    ax.set_xlabel("share of confident time (%)")
    escalated = sum(1 for c in calls if c.call.escalated or c.escalated_roles)
    ax.set_title(title or f"{len(calls)} calls, {escalated} escalated", fontsize=10)
    if not emotions:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no confident segments", transform=ax.transAxes, ha="center")
    return _png(fig)


@dataclass(frozen=True)
class Picture:
    name: str
    """File name under `pictures/<date>/`."""
    caption: str
    png: bytes


def picture_name(uri: str, recording_id: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.rsplit("/", 1)[-1].rsplit(".", 1)[0])[:80]
    return f"{recording_id}-{stem}.png"


def pictures_dir(day: dt.date) -> str:
    return f"pictures/{day.isoformat()}"


def write_pictures(output_uri: str, day: dt.date, pictures: Sequence[Picture]) -> list[str]:
    """Write the pictures under `<output>/pictures/<date>/`; returns where each went."""
    from results_store.storage import open_location

    location = open_location(output_uri)
    out = []
    for picture in pictures:
        rel = f"{pictures_dir(day)}/{picture.name}"
        location.write_bytes(rel, picture.png)
        out.append(location.uri(rel))
    return out


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def artifact_markdown(pictures: Sequence[Picture], *, heading: str = "") -> str:
    """Markdown for a Prefect markdown artifact that shows the pictures in the UI itself."""
    lines = [f"## {heading}", ""] if heading else []
    for picture in pictures:
        alt = picture.caption.replace("]", ")").replace("[", "(")
        lines += [f"**{picture.caption}**", "", f"![{alt}]({data_uri(picture.png)})", ""]
    return "\n".join(lines)


ARTIFACT_MAX_CALLS = 12
"""The Prefect artifact shows the distribution and at most this many escalated calls' timelines
(each inline picture is ~30-60 kB of base64 in the artifact)."""


def night_pictures(
    session: Any,
    day: dt.date,
    settings: Settings,
    *,
    only_escalated: bool = False,
    max_calls: int | None = None,
    calls: Sequence[CallSummary] | None = None,
) -> list[Picture]:
    """The distribution of the night, then each call's timeline (escalated calls first; at most
    `max_calls` timelines). `calls`: the night's calls when the caller has read them already."""
    if calls is None:
        calls = calls_on(session, day)
    pictures = [Picture("distribution.png", f"Emotions of {day.isoformat()}", distribution_png(calls))]
    ordered = sorted(calls, key=lambda c: (not _escalated(c), c.uri))
    for c in ordered:
        if only_escalated and not _escalated(c):
            continue
        if max_calls is not None and len(pictures) > max_calls:
            break
        data = load_call(session, c.recording_id)
        caption = c.uri + (" (escalated: " + ", ".join(_escalation_scopes(c)) + ")" if _escalated(c) else "")
        png = timeline_png(
            data, min_confidence=settings.min_confidence, roles=settings.channel_roles, title=c.uri
        )
        pictures.append(Picture(picture_name(c.uri, c.recording_id), caption, png))
    return pictures


def _escalated(c: CallSummary) -> bool:
    return c.call.escalated or bool(c.escalated_roles)


def _escalation_scopes(c: CallSummary) -> list[str]:
    return (["call"] if c.call.escalated else []) + c.escalated_roles


def publish_night(
    session: Any, day: dt.date, settings: Settings, *, every_call: bool = True
) -> tuple[list[str], str]:
    """Write the night's pictures beside the dataset and return (their URIs, the markdown of a
    Prefect artifact showing the distribution and the escalated calls in the UI).

    `every_call=False` draws only what the artifact shows (the distribution and at most
    `ARTIFACT_MAX_CALLS` escalated calls): each timeline takes about 0.1-0.2 s to draw, which
    the nightly run does not make every night wait for. The flow publishes the markdown with
    `create_markdown_artifact(markdown, key=...)`.
    """
    calls = calls_on(session, day)  # once: the pictures and the heading both need them
    if every_call:
        pictures = night_pictures(session, day, settings, calls=calls)
    else:
        pictures = night_pictures(
            session, day, settings, only_escalated=True, max_calls=ARTIFACT_MAX_CALLS, calls=calls
        )
    uris = write_pictures(settings.output_uri, day, pictures)
    shown = [pictures[0], *[p for p in pictures[1:] if "(escalated" in p.caption][:ARTIFACT_MAX_CALLS]]
    escalated = sum(1 for c in calls if _escalated(c))
    heading = f"Emotions of {day.isoformat()}: {len(calls)} calls, {escalated} escalated"
    markdown = artifact_markdown(shown, heading=heading)
    if escalated > ARTIFACT_MAX_CALLS:
        where = f"`{pictures_dir(day)}/`" if every_call else f"`valence-pipeline report --date {day}`"
        markdown += f"\n_{escalated - ARTIFACT_MAX_CALLS} more escalated calls: see {where}._\n"
    return uris, markdown
